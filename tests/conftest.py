"""Shared fixtures: seeded generators, the dtypes and devices every op is tested on.

Statistical policy: tests that draw random problems use fixed seeds, so they are deterministic;
no test here relies on a random event with a non-zero false-failure rate.
"""

import pytest
import torch

# The suite's problems are small: one intra-op thread is as fast as two, and it keeps the suite
# from slowing down many-fold when another process shares the two cores (OpenMP threads that
# spin-wait for a busy core).
torch.set_num_threads(1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
