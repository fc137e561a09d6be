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


def check_per_sample_dropout(model: torch.nn.Module) -> None:
    """``audio_keep``/``ref_keep`` False gives a sample exactly what a dropped (None) condition
    gives it: the backbone's learned null audio token and its absent reference, never a zero
    tensor. The kept sample is unaffected by its neighbour's drop."""
    perturb(model)  # the null token and flags must be non-trivial for the check to bite
    model.eval()
    x, t, audio, ref, motion = inputs()
    keep = torch.tensor([True, False])
    with torch.no_grad():
        mixed = model(x, t, audio, ref, motion, audio_keep=keep, ref_keep=keep)
        dropped = model(x[1:], t[1:], None, None, motion[1:])
        kept = model(x[:1], t[:1], audio[:1], ref[:1], motion[:1])
        zeroed = model(x[1:], t[1:], audio[1:] * 0, ref[1:] * 0, motion[1:])
    torch.testing.assert_close(mixed[1:], dropped, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[:1], kept, rtol=1e-5, atol=1e-5)
    assert (mixed[1:] - zeroed).abs().max() > 1e-3  # zeros are not "absent"
