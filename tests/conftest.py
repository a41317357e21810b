"""Fixtures every test file shares."""

import sys

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test: bit-exact comparisons need the same thread count in every
    run, and on 2 shared cores torch's spinning OpenMP threads oversubscribe (a 10-100x
    slowdown next to the other test worker)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def close_figures():
    """Figures a test drew are closed after it (matplotlib keeps them otherwise)."""
    yield
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")
