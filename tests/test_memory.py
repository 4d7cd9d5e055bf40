"""Compiled per-device memory of the 1B shape (4 of its 16 layers, full 128k vocabulary) on 8 simulated devices:
a regression in activation sharding, rematerialisation or the held-out evaluation fails here, not on a TPU.

Nothing is allocated: the programs are compiled on abstract shapes (benchmarks/memory.py). The arguments
are exactly the float32 params and the two Adam moments split 8 ways. The temporaries' bounds are 15% above
what this code compiles to (train step 3.88 GiB, eval 2.52 GiB); without the residual stream's batch
constraints they are 8.65 and 15.8 GiB, and the train step without rematerialisation 5.3 GiB.
"""

import pytest

from benchmarks import memory
from lsjax import sharding

GIB = 2 ** 30
CONFIG = memory.MODELS["llama3.2-1b"].replace(num_layers=4, remat="full")
BATCH, SEQ = 8, 2048  # one 2048-token row per device


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh((1, 8, 1))


def test_train_step_memory_per_device(mesh):
    figures = memory.train_step_memory(CONFIG, mesh, BATCH, SEQ)
    assert figures["arguments"] <= 1.01 * 12 * CONFIG.num_params() / 8 + 2 ** 20, figures
    assert figures["temporaries"] <= 1.15 * 3.88 * GIB, figures


def test_held_out_eval_memory_per_device(mesh):
    figures = memory.eval_memory(CONFIG, mesh, BATCH, SEQ)
    assert figures["temporaries"] <= 1.15 * 2.52 * GIB, figures
