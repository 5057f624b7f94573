"""Shared test setup: single-threaded torch (tests run on small CPU runners) and a fixed seed."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fixed_seed() -> None:
    """Every test starts from the same torch RNG state, independent of test order."""
    torch.manual_seed(0)
