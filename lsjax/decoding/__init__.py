"""Generation loops that run entirely on the device over a static-shape KV cache."""
