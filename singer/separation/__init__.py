"""Vocal separators: a mixture (voice over music) → the voice, before any audio front-end.

Importing this package registers every separator module in it in
``singer.registry.SEPARATORS`` (``python -m singer.registry separator`` lists them):

* ``none``: the mixture unchanged;
* ``mask_net``: a small STFT mask network the harness trains itself on SynthSing with
  accompaniment (on first use, or with ``python -m singer.separation.train``); runs offline;
* ``hdemucs``: pretrained Hybrid Demucs (torchaudio's architecture) from a local state dict,
  sha256-checked; nothing is downloaded.

``python -m singer.separation.measure`` reports their SI-SDR on held-out SynthSing clips.
"""

from singer.registry import import_submodules
from singer.separation.base import (
    Separator,
    cache_separator,
    check_separator,
    load_separator,
    parse_separator_args,
    separate,
    separator_from_command_line,
    separator_spec,
)

# The command-line modules register nothing and must not be imported before ``-m`` runs them.
import_submodules(__name__, __path__, skip=("measure", "train"))

__all__ = [
    "Separator",
    "cache_separator",
    "check_separator",
    "load_separator",
    "parse_separator_args",
    "separate",
    "separator_from_command_line",
    "separator_spec",
]
