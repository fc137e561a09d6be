"""aniportrait: AniPortrait (Wei et al. 2024), two stages on the harness's modules.

Stage 1 (audio → motion): an audio front-end + a temporal transformer predict the per-frame face
motion parameters (SynthSing's cues; face-box trajectory on real data). Stage 2 (motion → video):
unet3d + GaussianDiffusion conditioned on the motion rendered as a landmark-blob image (extra input
channels, as AniPortrait's pose guider adds pose features to the noisy latent) and the reference
frame. See ``baselines/aniportrait/README.md`` and ``baselines/conf/model/aniportrait.yaml``.
"""

from baselines.aniportrait.model import STAGES, Audio2Motion, AniPortrait, build_aniportrait
from baselines.aniportrait.motion import MOTION_CHANNELS, face_box_motion, render_motion
from singer.models.spec import ModelSpec, register_model_spec

SPEC = register_model_spec(
    ModelSpec(
        name="aniportrait",
        build=build_aniportrait,
        description="AniPortrait: audio → face motion (transformer), motion map + reference → video (unet3d)",
    )
)

__all__ = [
    "MOTION_CHANNELS",
    "SPEC",
    "STAGES",
    "AniPortrait",
    "Audio2Motion",
    "build_aniportrait",
    "face_box_motion",
    "render_motion",
]
