"""Shared fixtures: every test starts from a known seed and leaves global RNG state as it found it."""

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def seeded_rng():
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])
