"""Train with the LayerSkip recipe.

    python train.py --config configs/X.py --workdir DIR [--config.train.p_max=0.2 ...]

Writes orbax checkpoints under DIR/checkpoints, DIR/metrics.jsonl, DIR/plots/ and, at the end, the model in
Hugging Face format (DIR/hf, or --config.export_dir). Run the same command again to resume.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "a config file from configs/", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and plots")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from lsjax import train
    from lsjax.errors import InputError
    try:
        result = train.run(flags.FLAGS.config, flags.FLAGS.workdir)
    except InputError as err:  # a bad config value, checkpoint, tokenizer or dataset
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"done at step {result['step']}; model exported to {result['export_dir']}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
