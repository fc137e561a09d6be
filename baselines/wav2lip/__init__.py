"""wav2lip: Wav2Lip (Prajwal et al. 2020), a GAN/regression lip-sync model (not diffusion).

A per-frame generator (reference frame + lower-half-masked frame + 0.2 s mel window → frame)
trained with L1 reconstruction, the sync loss of a frozen ``model=syncnet`` expert trained first
on the same data (by default inside the same job: ``baselines/wav2lip/expert.py``), and an
optional visual-quality discriminator. See
``baselines/wav2lip/README.md`` and ``baselines/conf/model/wav2lip.yaml``.
"""

from baselines.wav2lip.model import (
    BufferedAdam,
    LipGenerator,
    QualityDiscriminator,
    Wav2Lip,
    build_wav2lip,
    mask_lower_half,
)
from singer.models.spec import ModelSpec, register_model_spec

SPEC = register_model_spec(
    ModelSpec(
        name="wav2lip",
        build=build_wav2lip,
        description="Wav2Lip: per-frame masked-face + mel U-Net generator, L1 + frozen sync-expert loss "
        "(+ optional quality GAN); one forward pass, no diffusion",
    )
)

__all__ = [
    "SPEC",
    "BufferedAdam",
    "LipGenerator",
    "QualityDiscriminator",
    "Wav2Lip",
    "build_wav2lip",
    "mask_lower_half",
]
