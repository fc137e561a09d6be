"""The optimizer, its LR schedule and the EMA of the weights, as the trainer builds them.

AdamW over :func:`parameter_groups` (fused on CUDA unless ``trainer.fused_adamw`` says
otherwise), a linear warm-up over ``trainer.warmup_steps``, and an :class:`EMA` whose weights
are the ones validated, sampled and evaluated.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch

from singer.acceleration import use_fused_adamw

# Parameters whose meaning is "a multiplier around 1" or "a learned stand-in" (MSM/SFM band
# gains, region weights, null tokens, type vectors): weight decay would pull them to 0.
NO_DECAY_NAMES = ("gains", "region_weights", "null_", "_type", "logit_")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay for weight matrices and kernels only. Biases, norms (every 1-D
    parameter) and the gain/null-token parameters of ``NO_DECAY_NAMES`` are not decayed: the
    MSM and SFM start at identity (gains 1) and must stay there unless the loss moves them."""
    decay, keep = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        exempt = param.ndim < 2 or any(key in leaf for key in NO_DECAY_NAMES)
        (keep if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": keep, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: torch.nn.Module, tc: Mapping, device: torch.device
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its warm-up schedule from the ``trainer`` config section ``tc``."""
    optimizer = torch.optim.AdamW(
        parameter_groups(model, tc["weight_decay"]),
        lr=tc["lr"],
        betas=tuple(tc["betas"]),
        fused=use_fused_adamw(tc.get("fused_adamw", "auto"), device),
    )
    warmup = max(1, int(tc["warmup_steps"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    return optimizer, scheduler


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # Warm-up: early averages would otherwise be dominated by the random init.
        decay = min(self.decay, (1 + step) / (10 + step))
        ema_state = self.model.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                ema_state[name].lerp_(value, 1.0 - decay)
            else:
                ema_state[name].copy_(value)
