"""Video backbones: denoisers ``x_t B×C×F×H×W → B×C×F×H×W`` conditioned on audio, reference and motion.

Importing this package registers every backbone module in it in ``singer.registry.BACKBONES``.
"""

from singer.backbones.sfm import BOTTLENECK_FILTERS, build_bottleneck_filter
from singer.backbones.unet3d import UNet3D
from singer.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["BOTTLENECK_FILTERS", "UNet3D", "build_bottleneck_filter"]
