"""Shared test set-up.

Without a GPU, Triton kernels run through the interpreter: the variable must be set before
anything imports triton (``triton.jit`` reads it when a kernel is defined).
"""
import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped, with the reason, where no CUDA device exists."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """A different but reproducible seed per test: random inputs are fresh, failures replayable."""
    seed = zlib.crc32(request.node.nodeid.encode())  # str hash() is salted per process
    torch.manual_seed(seed)
    return seed


@pytest.fixture
def one_thread():
    """One torch thread for the test: for many tiny ops (a streaming push), threads only add
    contention (on a loaded machine, 10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
