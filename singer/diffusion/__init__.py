"""Diffusion objective and sampler: v-prediction, zero-terminal SNR, min-SNR weighting, DDIM + CFG."""

from singer.diffusion.gaussian import (
    GaussianDiffusion,
    cfg_combine,
    diffusion_for_codec,
    drop_conditions,
)

__all__ = ["GaussianDiffusion", "cfg_combine", "diffusion_for_codec", "drop_conditions"]
