"""The one exception type the command-line tools turn into `error: <message>` and exit code 2.

Every check at the edge (configs, checkpoints, tokenizers, data, prompts, flags) raises a subclass with a
one-line message naming the bad value and what is allowed; anything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad user input; the message is one line naming the value and what is allowed."""
