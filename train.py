"""Train with the LayerSkip recipe.

    python train.py --config configs/X.py --workdir DIR [--config.train.p_max=0.2 ...]

Writes orbax checkpoints under DIR/checkpoints, DIR/metrics.jsonl, DIR/plots/ and, at the end, the model in
Hugging Face format (DIR/hf, or --config.export_dir). Run the same command again to resume.
"""

import re
import sys

from lsjax import xla_cpu

xla_cpu.configure()  # before JAX starts: simulated CPU devices must not deadlock in collectives

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "a config file from configs/", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and plots")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl's flag parsing, with any bad flag (unknown config key, wrong type, unloadable config file, missing
    flag) reported as one line and exit code 2 instead of a traceback."""
    try:
        remaining = flags.FLAGS(argv)
        flags.FLAGS.config.get("train")  # a config file that failed to load raises only when first read
        return remaining
    except OSError as err:  # the config file: missing, or raising on import
        _exit_with(f"--config: {str(err).strip().splitlines()[-1].strip()}")
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as err:
        while err.args and isinstance(err.args[0], BaseException):  # ml_collections wraps its KeyError
            err = err.args[0]
        text = " ".join(str(err.args[0] if err.args else err).split())
        unknown = re.match(r"""'(\w+)'(?: Did you mean "(\w+)")?""", text)
        if isinstance(err, (KeyError, AttributeError)) and unknown:
            key, suggestion = unknown.groups()
            flag = next((a.split("=")[0] for a in argv if re.search(rf"\.{key}(=|\.|$)", a.split("=")[0])), key)
            text = f"{flag}: unknown config key {key!r}" + (f" (did you mean {suggestion!r}?)" if suggestion else "")
        _exit_with(text)


def _exit_with(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from lsjax import train
    from lsjax.errors import InputError
    try:
        result = train.run(flags.FLAGS.config, flags.FLAGS.workdir)
    except InputError as err:  # a bad config value, checkpoint, tokenizer or dataset
        _exit_with(str(err))
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"done at step {result['step']}; model exported to {result['export_dir']}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
