"""Video backbones: denoisers ``x_t B×C×F×H×W → B×C×F×H×W`` conditioned on audio, reference and motion.

Importing this package registers every backbone in ``singer.registry.BACKBONES``.
"""

from singer.backbones.sfm import BOTTLENECK_FILTERS, build_bottleneck_filter
from singer.backbones.unet3d import UNet3D

__all__ = ["BOTTLENECK_FILTERS", "UNet3D", "build_bottleneck_filter"]
