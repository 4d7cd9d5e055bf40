"""lsjax's TFDS builders. They live in a package because TFDS registers builders by module on import."""

from lsjax.datasets.builders import (
    SPLITS,
    DataError,
    LocalText,
    PythonStdlib,
    split_of,
    stdlib_files,
)

__all__ = ["BUILDERS", "SPLITS", "DataError", "LocalText", "PythonStdlib", "split_of", "stdlib_files"]

BUILDERS = {"python_stdlib": PythonStdlib, "local_text": LocalText}
