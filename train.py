"""Train with the LayerSkip recipe.

    python train.py --config configs/X.py --workdir DIR [--config.train.p_max=0.2 ...]

Writes orbax checkpoints under DIR/checkpoints, DIR/metrics.jsonl, DIR/plots/ and, at the end, the model in
Hugging Face format (DIR/hf, or --config.export_dir). Run the same command again to resume.

Exit codes: 0 done; 2 bad input (one line: a flag, config file, config value, workdir, checkpoint, or a
second run on a workdir another run holds); 3 diverged (a non-finite loss or gradient norm: nothing saved
or exported after it); 130 interrupted by Ctrl-C (the current step saved). See docs/robustness.md.
"""

import contextlib
import os
import re
import sys
import traceback

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
    except Exception as err:  # noqa: BLE001 - a config file can raise anything; unknown kinds re-raise
        message = _flag_error(err, argv)
        if message is None:
            raise
        _exit_with(message)


def _flag_error(err: Exception, argv) -> str | None:
    """The one-line message for a flag or config file error, or None for an error of another kind (a bug)."""
    in_file = _config_file_error(err, _config_path(argv))
    if in_file:
        return f"--config {in_file}"
    if isinstance(err, OSError):  # the config file: missing, or unreadable
        return f"--config: {str(err).strip().splitlines()[-1].strip()}"
    if not isinstance(err, (flags.Error, KeyError, AttributeError, ValueError, TypeError)):
        return None
    while err.args and isinstance(err.args[0], BaseException):  # ml_collections wraps its KeyError
        err = err.args[0]
    text = " ".join(str(err.args[0] if err.args else err).split())
    unknown = re.match(r"""'(\w+)'(?: Did you mean "(\w+)")?""", text)
    if isinstance(err, (KeyError, AttributeError)) and unknown:
        key, suggestion = unknown.groups()
        flag = next((a.split("=")[0] for a in argv if re.search(rf"\.{key}(=|\.|$)", a.split("=")[0])), key)
        text = f"{flag}: unknown config key {key!r}" + (f" (did you mean {suggestion!r}?)" if suggestion else "")
    return text


def _config_path(argv) -> str | None:
    """The --config file as given (without a :variant), or None."""
    for flag, value in zip(argv, argv[1:] + [None]):
        if flag.startswith("--config="):
            return flag.split("=", 1)[1].split(":")[0]
        if flag == "--config" and value:
            return value.split(":")[0]
    return None


def _config_file_error(err: BaseException, path: str | None) -> str | None:
    """'FILE:LINE: Type: message' when `err`, or an error it was raised from or while handling, came from the
    config file itself (a syntax error, a key it reads that does not exist, its own raise)."""
    target = path and os.path.realpath(path)
    seen = set()
    while target and err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, SyntaxError) and err.filename and os.path.realpath(err.filename) == target:
            return f"{path}:{err.lineno}: SyntaxError: {err.msg}"
        lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if os.path.realpath(f.filename) == target]
        if lines:
            inner = err
            while inner.args and isinstance(inner.args[0], BaseException):  # ml_collections wraps its KeyError
                inner = inner.args[0]
            text = str(inner.args[0]) if isinstance(inner, KeyError) and inner.args else str(inner)  # no repr quotes
            return f"{path}:{lines[-1]}: {type(err).__name__}: {' '.join(text.split()) or '(no message)'}"
        err = err.__cause__ or err.__context__
    return None


def _exit_with(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from lsjax import workdir as workdir_lib  # light: the lock is taken before JAX starts
    from lsjax.errors import InputError
    cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    try:  # (a multi-host run locks in lsjax.train.run, on its first process only)
        with contextlib.nullcontext() if cfg.get("mesh", {}).get("distributed") else workdir_lib.locked(workdir):
            result = _train(cfg, workdir)
    except InputError as err:  # a bad config value, workdir, checkpoint, tokenizer or dataset
        _exit_with(str(err))
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"done at step {result['step']}; model exported to {result['export_dir']}", file=sys.stderr)


def _train(cfg, workdir):
    """lsjax.train.run after the config file's keys are checked against configs/base.py; exit 3 on divergence."""
    from configs import base
    from lsjax import run_guards, train, train_config
    train_config.check_config_keys(cfg, base.get_config(), f"--config {_config_path(sys.argv)}")
    try:
        return train.run(cfg, workdir)
    except run_guards.DivergedError as err:
        _exit_with(str(err), code=3)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
