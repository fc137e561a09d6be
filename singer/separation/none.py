"""``none``: no separation; the front-end hears the mixture as it is."""

from __future__ import annotations

import torch

from singer.registry import SEPARATORS
from singer.separation.base import Separator


@SEPARATORS.register("none")
class NoSeparation(Separator):
    """The mixture unchanged (the reference arm of every separation comparison)."""

    def __init__(self):
        super().__init__(chunk_seconds=3600.0, overlap_seconds=0.0)

    def separate_chunk(self, mixture: torch.Tensor) -> torch.Tensor:
        return mixture
