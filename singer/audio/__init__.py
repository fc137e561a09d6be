"""Audio front-ends: waveform ``B×S`` → audio tokens ``B×F×N×D``.

Importing this package registers every front-end module in it in ``singer.registry.FRONTENDS``
(one file each): ``raw``, ``mel``, ``msm`` (multi-scale spectral module), ``sfm`` (spectral
filtering) and ``wav2vec2``. Build one by name: ``FRONTENDS.build("msm", levels=3, wavelet="db2")``.
"""

from singer.audio.base import (
    AudioFrontend,
    FeatureExtractor,
    FeatureFrontend,
    TokenProjector,
    frame_windows,
)
from singer.audio.mel import MelFeatures, MelFrontend
from singer.audio.msm import MSMFrontend
from singer.audio.raw import RawFeatures, RawFrontend
from singer.audio.sfm import SFMFrontend
from singer.audio.wav2vec2 import Wav2Vec2Frontend
from singer.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = [
    "AudioFrontend",
    "FeatureExtractor",
    "FeatureFrontend",
    "TokenProjector",
    "frame_windows",
    "MelFeatures",
    "MelFrontend",
    "MSMFrontend",
    "RawFeatures",
    "RawFrontend",
    "SFMFrontend",
    "Wav2Vec2Frontend",
]
