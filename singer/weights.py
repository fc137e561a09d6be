"""Optional pretrained weight files: local paths, sha256-checked, with actionable errors.

Nothing in the harness downloads weights. A component that can use a pretrained network
(wav2vec2, Inception, I3D, SyncNet, an SD VAE) takes a local file path and its sha256 from
the config; :func:`resolve_weights` checks both and says exactly what to do when either is
wrong.

    path = resolve_weights(cfg.pretrained_path, sha256=cfg.sha256, name="wav2vec2-base",
                           config_key="frontend.pretrained_path", hint="...")
    state = load_state_dict(path)
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

_CHUNK = 1 << 20


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight file is needed but no path was given or the file does not exist."""


class WeightsChecksumError(ValueError):
    """A weight file exists but its sha256 is not the one the config expects."""


def sha256_file(path: str | Path, chunk_size: int = _CHUNK) -> str:
    """Hex sha256 of a file, read in chunks so large checkpoints never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights(
    path: str | Path | None,
    *,
    sha256: str | None,
    name: str,
    config_key: str,
    hint: str,
    sha256_key: str | None = None,
) -> Path:
    """Return the checked path of a local weight file.

    Args:
        path: where the file is (``None`` when the config does not name one).
        sha256: expected hex digest; ``None`` skips the check with a warning that shows the
            actual digest, so it can be pinned in the config.
        name: what the file is, for messages (e.g. ``"wav2vec2-base state dict"``).
        config_key: the config key that holds ``path`` (e.g. ``"frontend.pretrained_path"``).
        hint: how to obtain the file offline (printed verbatim).
        sha256_key: the config key that holds ``sha256``, if it has one.

    Raises:
        MissingWeightsError: ``path`` is ``None`` or no file exists there.
        WeightsChecksumError: the file's sha256 differs from ``sha256``.
    """
    checksum_text = f" and `{sha256_key}=<its sha256>`" if sha256_key else ""
    if path is None or str(path).strip() == "":
        problem = f"{name} is needed but no file was given (`{config_key}` is not set)."
    elif not Path(path).expanduser().is_file():
        problem = (
            f"{name} is needed but `{config_key}` points to {str(path)!r}, which is not a file."
        )
    else:
        problem = None
    if problem is not None:
        raise MissingWeightsError(
            f"{problem}\n"
            f"  Fix: copy the file onto this machine (for example under ./weights/) and set "
            f"`{config_key}=/path/to/file`{checksum_text} in the config or on the command line "
            f"(`sha256sum FILE` prints the digest).\n"
            f"  How to obtain it offline: {hint}"
        )

    resolved = Path(path).expanduser().resolve()
    actual = sha256_file(resolved)
    if sha256 is None or str(sha256).strip() == "":
        warnings.warn(
            f"{name} at {resolved} is used without a sha256 check; pin it with "
            f"`{sha256_key or 'sha256'}={actual}`",
            stacklevel=2,
        )
        return resolved
    expected = str(sha256).strip().lower()
    if actual != expected:
        raise WeightsChecksumError(
            f"{name} at {resolved} has the wrong sha256.\n"
            f"  expected: {expected}\n"
            f"  actual:   {actual}\n"
            f"  The file is corrupt or a different version. Replace it with the intended file, or, if this "
            f"file is the one you want, set `{sha256_key or 'sha256'}={actual}`.\n"
            f"  How to obtain it offline: {hint}"
        )
    return resolved


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict onto the CPU without running pickled code.

    ``.safetensors`` files are read with ``safetensors``; anything else with
    ``torch.load(weights_only=True)``. A checkpoint that wraps the weights under
    ``"state_dict"`` is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            # lazy: optional: safetensors comes with diffusers and timm, not as a dependency of
            # its own, and only these files need it
            from safetensors.torch import load_file
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(f"reading {path} needs the `safetensors` package") from err
        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} does not hold a state dict (a mapping of parameter names to tensors)"
        )
    return dict(state)
