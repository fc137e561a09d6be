"""``wav2vec2``: a frozen wav2vec2-base encoder, all transformer layers, as Hallo uses it.

The waveform (normalised per utterance to zero mean, unit variance, as the Hugging Face
feature extractor does for wav2vec2-base) runs through torchaudio's wav2vec2-base
architecture. The outputs of every transformer layer are stacked (``B×T50×L×768``, 50 Hz),
interpolated at the video frame centres (``B×F×L·768``), windowed ±k frames
(``B×F×(2k+1)×L·768``) and projected by an MLP to ``N`` tokens of size ``D``.

Only the projection MLP trains; the encoder is frozen and always in eval mode. Its weights
come from a local file (a torchaudio ``wav2vec2_base`` state dict, sha256-checked through
:mod:`singer.weights`), or, with ``random_init=True``, from a random initialisation that
needs no file (for offline tests and smoke runs; the features are then meaningless).

Paper-faithful settings: ``encoder_layers=12``, ``window=2``, ``tokens=32``, ``hidden=512``.
``encoder_layers < 12`` keeps only the first layers (cheap CPU tests); a 12-layer pretrained
file then loads its first layers only.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torchaudio.models import wav2vec2_model

from singer.audio.base import AudioFrontend, TokenProjector, frame_windows, sample_at_frames
from singer.registry import FRONTENDS
from singer.weights import load_state_dict, resolve_weights

EMBED_DIM = 768
MAX_LAYERS = 12
# The conv feature encoder has a 400-sample receptive field and a 320-sample stride:
# frame i covers samples [320·i, 320·i + 400), i.e. it is centred at (i + 0.625) / 50 s.
HOP = 320
RECEPTIVE_FIELD = 400

WEIGHTS_HINT = (
    "on a machine with network access run\n"
    '      python -c "import torch, torchaudio; '
    "torch.save(torchaudio.pipelines.WAV2VEC2_BASE.get_model().state_dict(), 'wav2vec2_base.pt')\"\n"
    "    (or convert a Hugging Face facebook/wav2vec2-base checkpoint with "
    "torchaudio.models.wav2vec2.utils.import_huggingface_model and save its state_dict()),\n"
    "    copy wav2vec2_base.pt here and set `frontend.pretrained_path=/path/to/wav2vec2_base.pt "
    "frontend.sha256=<sha256sum of it>`.\n"
    "    Alternatively set `frontend.random_init=true` for an offline, randomly initialised encoder "
    "(smoke tests only: its features carry no learned speech knowledge)."
)


def build_wav2vec2_base(num_layers: int = MAX_LAYERS):
    """torchaudio's wav2vec2-base architecture with ``num_layers`` transformer layers, no dropout."""
    return wav2vec2_model(
        extractor_mode="group_norm",
        extractor_conv_layer_config=None,
        extractor_conv_bias=False,
        encoder_embed_dim=EMBED_DIM,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=128,
        encoder_pos_conv_groups=16,
        encoder_num_layers=num_layers,
        encoder_num_heads=12,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=3072,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=False,
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )


_LAYER_KEY = re.compile(r"^encoder\.transformer\.layers\.(\d+)\.")


def load_encoder_weights(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchaudio wav2vec2-base state dict, dropping transformer layers the model lacks."""
    num_layers = len(model.encoder.transformer.layers)
    kept = {}
    for key, value in state.items():
        match = _LAYER_KEY.match(key)
        if match and int(match.group(1)) >= num_layers:
            continue
        kept[key] = value
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{source} is not a torchaudio wav2vec2-base state dict: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}. Hugging Face checkpoints must be converted first "
            "(torchaudio.models.wav2vec2.utils.import_huggingface_model)."
        )


@FRONTENDS.register("wav2vec2")
class Wav2Vec2Frontend(AudioFrontend):
    """Frozen wav2vec2-base (all layers stacked, as Hallo), windowed ±k frames → MLP → tokens."""

    def __init__(
        self,
        *,
        pretrained_path: str | None = None,
        sha256: str | None = None,
        random_init: bool = False,
        encoder_layers: int = MAX_LAYERS,
        hidden: int = 512,
        normalize_wav: bool = True,
        **common,
    ):
        super().__init__(**common)
        if not 1 <= encoder_layers <= MAX_LAYERS:
            raise ValueError(f"encoder_layers must be in 1..{MAX_LAYERS}, got {encoder_layers}")
        if self.sample_rate != 16000:
            raise ValueError(
                f"wav2vec2-base expects 16 kHz audio, got sample_rate={self.sample_rate}"
            )
        self.encoder_layers = encoder_layers
        self.normalize_wav = normalize_wav
        self.encoder = build_wav2vec2_base(encoder_layers)
        if pretrained_path is not None or not random_init:
            path = resolve_weights(
                pretrained_path,
                sha256=sha256,
                name="wav2vec2-base state dict (torchaudio format)",
                config_key="frontend.pretrained_path",
                sha256_key="frontend.sha256",
                hint=WEIGHTS_HINT,
            )
            load_encoder_weights(self.encoder, load_state_dict(path), str(path))
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.projector = TokenProjector(
            2 * self.window + 1, encoder_layers * EMBED_DIM, self.tokens, self.dim, hidden=hidden
        )

    def train(self, mode: bool = True):
        # The encoder is frozen: keep it in eval mode whatever the parent model does.
        super().train(mode)
        self.encoder.eval()
        return self

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform ``B×S`` → stacked layer outputs ``B×T50×(L·768)`` at 50 Hz."""
        wav = self.check_wav(wav).float()
        if self.normalize_wav:
            # Zero mean, unit variance per utterance, as wav2vec2-base was trained.
            variance = wav.var(dim=-1, keepdim=True, unbiased=False)
            wav = (wav - wav.mean(dim=-1, keepdim=True)) / torch.sqrt(variance + 1e-7)
        if wav.shape[-1] < RECEPTIVE_FIELD:
            wav = F.pad(wav, (0, RECEPTIVE_FIELD - wav.shape[-1]))
        with torch.no_grad():
            layers, _ = self.encoder.extract_features(wav.to(next(self.encoder.parameters()).dtype))
        return torch.stack(layers, dim=2).flatten(2)  # B×T×L×768 → B×T×(L·768)

    def forward(self, wav, num_frames, x_t=None, t=None):
        """``wav: B×S`` → tokens ``B×F×N×D``; ``x_t`` and ``t`` are ignored."""
        feats = self.features(wav)
        rate = self.sample_rate / HOP
        offset = (RECEPTIVE_FIELD / 2) / HOP  # 0.625: frame centres, see HOP above
        per_frame = sample_at_frames(
            feats, rate=rate, num_frames=num_frames, fps=self.fps, offset=offset
        )
        windows = frame_windows(
            per_frame, rate=self.fps, num_frames=num_frames, fps=self.fps, window=self.window
        )
        return self.projector(windows.to(self.projector.mlp[0].weight.dtype))
