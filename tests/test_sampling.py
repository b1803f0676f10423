"""Choosing the next token: the edge cases of the sampling knobs."""

from __future__ import annotations

import torch

from vlmserve.engine.base import Sampling, SamplingOptions
from vlmserve.engine.sampling import new_generator, sample


def sampling(temperature: float) -> Sampling:
    return Sampling(SamplingOptions(), 8, temperature, 1.0, 0, 1.0)


def test_a_vanishing_temperature_is_greedy_not_nan() -> None:
    """1e-270 divides the logits to infinity; vLLM treats it as 0, and so does vlmserve."""
    logits = torch.tensor([0.1, 2.5, -1.0, 2.4])
    for temperature in (0.0, 1e-270, 1e-6):
        assert sample(logits, sampling(temperature), new_generator(0)) == 1
    masked = torch.tensor([float("-inf"), 0.3, float("-inf"), 0.2])
    assert sample(masked, sampling(1e-300), new_generator(0)) == 1
