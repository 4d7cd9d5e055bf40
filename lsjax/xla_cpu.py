"""XLA:CPU settings that must be in place before JAX creates its CPU backend.

Simulated host devices (`--xla_force_host_platform_device_count`) run sharded programs on a CPU. XLA:CPU's
concurrency-optimised scheduler can then let the simulated devices enter one step's collectives in different
orders and deadlock (a rendezvous timeout after 40 s, seen on a (2, 4, 1) train step); the plain scheduler
keeps them in program order. Every entry point calls `configure` first, so nobody needs to know the flag.
"""

from __future__ import annotations

import os

PLAIN_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
DEVICE_COUNT = "--xla_force_host_platform_device_count"


def configure(num_devices: int | None = None) -> None:
    """Adds the plain-scheduler flag (and `num_devices` simulated devices, unless XLA_FLAGS already sets a
    count) to XLA_FLAGS. Has no effect once JAX's CPU backend exists; other platforms ignore both flags."""
    flags = os.environ.get("XLA_FLAGS", "")
    extra = []
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        extra.append(PLAIN_SCHEDULER)
    if num_devices and DEVICE_COUNT not in flags:
        extra.append(f"{DEVICE_COUNT}={num_devices}")
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
