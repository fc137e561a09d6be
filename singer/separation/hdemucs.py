"""``hdemucs``: pretrained Hybrid Demucs from a local state dict (torchaudio's architecture).

    --separate hdemucs --separator-arg checkpoint=/weights/hdemucs_high.pt --separator-arg sha256=<hex>

torchaudio ships the network (``torchaudio.models.hdemucs_high``) but not its weights, so the
state dict is a local file, sha256-checked by :func:`singer.weights.resolve_weights`, and read
with ``torch.load(weights_only=True)``; nothing is downloaded. The intended file is the state
dict of ``torchaudio.pipelines.HDEMUCS_HIGH_MUSDB_PLUS`` (MUSDB-HQ plus 150 extra songs; sources
drums, bass, other, vocals; 44.1 kHz stereo), saved once on a machine with network access.

The mono 16 kHz mixture is normalised by its mean and standard deviation over its whole
length, resampled to the model's rate, duplicated to stereo and separated in chunks of
``chunk_seconds`` (10 s by default; torchaudio's tutorial does both the same way); the
``vocals`` source is averaged to mono, resampled back to 16 kHz and rescaled.
"""

from __future__ import annotations

import torch
import torchaudio.functional as AF
import torchaudio.models as M

from singer.registry import SEPARATORS
from singer.separation.base import Separator
from singer.weights import load_state_dict, resolve_weights

ARCHS = ("low", "medium", "high")
MUSDB_SOURCES = ("drums", "bass", "other", "vocals")
HDEMUCS_HINT = (
    "on a machine with network access save the pretrained state dict,\n"
    '      python -c "import torch, torchaudio; torch.save(torchaudio.pipelines.HDEMUCS_HIGH_MUSDB_PLUS'
    ".get_model().state_dict(), 'hdemucs_high.pt')\"\n"
    "    and copy hdemucs_high.pt here. Pass it as `--separator-arg checkpoint=PATH "
    "--separator-arg sha256=HEX` (prepare, generate) or `data.separator_args={checkpoint: PATH, "
    "sha256: HEX}` (training config)."
)


@SEPARATORS.register("hdemucs")
class HDemucsSeparator(Separator):
    """Pretrained Hybrid Demucs (MUSDB) from a local state dict, sha256-checked; its vocals source."""

    def __init__(
        self,
        checkpoint: str | None = None,
        sha256: str | None = None,
        arch: str = "high",
        sources: list[str] | tuple[str, ...] = MUSDB_SOURCES,
        model_sample_rate: int = 44100,
        chunk_seconds: float = 10.0,
        overlap_seconds: float = 1.0,
    ):
        super().__init__(chunk_seconds=float(chunk_seconds), overlap_seconds=float(overlap_seconds))
        if arch not in ARCHS:
            raise ValueError(f"hdemucs arch must be one of {ARCHS}, got {arch!r}")
        if isinstance(sources, str):  # from the command line: sources=drums,bass,other,vocals
            sources = sources.split(",")
        sources = [str(s).strip() for s in sources]
        if "vocals" not in sources:
            raise ValueError(f"hdemucs sources must include 'vocals', got {sources}")
        path = resolve_weights(
            None if checkpoint is None else str(checkpoint),
            sha256=None if sha256 is None else str(sha256),
            name=f"Hybrid Demucs state dict (torchaudio hdemucs_{arch})",
            config_key="checkpoint",
            sha256_key="sha256",
            hint=HDEMUCS_HINT,
        )

        self.model = getattr(M, f"hdemucs_{arch}")(sources=sources)
        try:
            self.model.load_state_dict(load_state_dict(path))
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise ValueError(
                f"{path} is not a state dict of torchaudio's hdemucs_{arch} with sources {sources}: "
                f"{first} (set `arch` and `sources` to match the file)"
            ) from None
        self.vocals_index = sources.index("vocals")
        self.model_sample_rate = int(model_sample_rate)
        self.source = str(path)

    @torch.no_grad()
    def forward(self, mixture: torch.Tensor, progress: bool = False) -> torch.Tensor:
        # Normalise each waveform by its whole length (not per chunk), so its chunks share one scale.
        wave = mixture.detach().float()
        mean = wave.mean(dim=-1, keepdim=True)
        std = wave.std(dim=-1, keepdim=True).clamp_min(1e-8)
        vocals = super().forward((wave - mean) / std, progress=progress)
        return vocals * std + mean

    def separate_chunk(self, mixture: torch.Tensor) -> torch.Tensor:
        length = mixture.shape[-1]
        x = AF.resample(mixture, self.sample_rate, self.model_sample_rate)
        x = x.unsqueeze(1).expand(-1, self.model.audio_channels, -1).contiguous()
        vocals = self.model(x)[:, self.vocals_index].mean(dim=1)  # B×2×n → B×n
        vocals = AF.resample(vocals, self.model_sample_rate, self.sample_rate)
        if vocals.shape[-1] >= length:
            return vocals[..., :length]
        return torch.nn.functional.pad(vocals, (0, length - vocals.shape[-1]))
