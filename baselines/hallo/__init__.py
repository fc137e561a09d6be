"""hallo: Hallo (Xu et al. 2024) as a config of the harness's audio-driven diffusion.

wav2vec2 features from all layers, windowed ±2 frames, projected to 32 tokens per frame; audio
cross-attention in every backbone block gated by lip, face and pose region masks with learned
per-region weights; reference frame and motion frames; optional region-weighted loss.
See ``baselines/hallo/README.md`` and ``baselines/conf/model/hallo.yaml``.
"""

from baselines.hallo.model import HalloDiffusion, build_hallo
from baselines.hallo.regions import REGIONS, region_masks
from singer.models.spec import ModelSpec, register_model_spec

SPEC = register_model_spec(
    ModelSpec(
        name="hallo",
        build=build_hallo,
        description="Hallo: all-layer wav2vec2 tokens + region-gated (lip/face/pose) audio attention in unet3d",
    )
)

__all__ = ["REGIONS", "SPEC", "HalloDiffusion", "build_hallo", "region_masks"]
