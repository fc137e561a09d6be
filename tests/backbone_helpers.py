"""Inputs and weight perturbation shared by the backbone unit tests (unet3d, dit)."""

from __future__ import annotations

import torch

N_TOKENS = 5  # audio tokens per frame


def inputs(b=2, f=4, size=32, m=2, seed=1, c=3, audio_dim=12):
    """Seeded ``(x_t B×C×F×S×S, t B, audio B×F×N×D, ref B×C×S×S, motion B×C×M×S×S | None)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, f, size, size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    audio = torch.randn(b, f, N_TOKENS, audio_dim, generator=g)
    ref = torch.randn(b, c, size, size, generator=g)
    motion = torch.randn(b, c, m, size, size, generator=g) if m else None
    return x, t, audio, ref, motion


def perturb(
    model: torch.nn.Module, std: float = 0.1, seed: int = 123, skip=lambda name: False
) -> None:
    """Move every weight off its init (zero-initialised ones included), except the skipped names."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            if not skip(name):
                p.add_(noise)
