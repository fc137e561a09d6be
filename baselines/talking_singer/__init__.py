"""talking_singer: SINGER with a talking-face audio path (mel front-end, no MSM, no SFM).

It is the same model class as SINGER (``singer.models.singer``); only the config differs
(``baselines/conf/model/talking_singer.yaml``), so the comparison isolates the singing modules.
"""

from singer.models.singer import build_audio_driven_diffusion
from singer.models.spec import ModelSpec, register_model_spec

SPEC = register_model_spec(
    ModelSpec(
        name="talking_singer",
        build=build_audio_driven_diffusion,
        description="SINGER minus MSM and SFM: mel front-end + unet3d without the bottleneck filter",
    )
)
