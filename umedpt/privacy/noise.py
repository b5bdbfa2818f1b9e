"""The Gaussian mechanism of one DP-SGD step: noise on the clipped sum, then averaging."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import torch


def secret_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from the OS's entropy, never from the run's seed.

    The server knows the run's seed; noise it could regenerate could be subtracted.
    """
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def noisy_average(
    summed: Mapping[str, torch.Tensor],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """``(sum of clipped grads + N(0, (noise_multiplier * max_grad_norm)^2)) / E[batch]``.

    Divided by the expected batch size (sample rate * dataset size), not the drawn one:
    the drawn size of a Poisson batch depends on who is in the data. An empty batch still
    gets its noise (its sum is zero).
    """
    if expected_batch_size <= 0:
        raise ValueError(f"expected_batch_size must be positive, got {expected_batch_size}")
    std = noise_multiplier * max_grad_norm
    out = {}
    for name, grad in summed.items():
        noise = torch.randn(grad.shape, generator=generator, device=grad.device, dtype=grad.dtype)
        out[name] = (grad + std * noise) / expected_batch_size
    return out
