"""Importing lsjax changes no global state a user's program owns."""

import subprocess
import sys

PROBE = """
import pkgutil, importlib, sys
import matplotlib
from absl import flags
backend = dict.__getitem__(matplotlib.rcParams, "backend")
import lsjax
for module in pkgutil.walk_packages(lsjax.__path__, "lsjax."):
    importlib.import_module(module.name)
assert "matplotlib.pyplot" not in sys.modules, "an lsjax module imports pyplot (it picks a global backend)"
assert dict.__getitem__(matplotlib.rcParams, "backend") == backend, "an lsjax module set matplotlib's backend"
ours = [name for name in flags.FLAGS if (flags.FLAGS.find_module_defining_flag(name) or "").startswith("lsjax")]
assert not ours, f"lsjax defined absl flags {ours} (the libraries it imports define their own)"
print("imported", len(sys.modules))
"""


def test_importing_every_lsjax_module_leaves_matplotlib_and_absl_flags_alone():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
