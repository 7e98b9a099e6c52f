"""Shared fixtures: seeded generators, the dtypes and devices every op is tested on.

Statistical policy: tests that draw random problems use fixed seeds, so they are deterministic;
no test here relies on a random event with a non-zero false-failure rate.
"""

import pytest
import torch


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
