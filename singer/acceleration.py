"""The trainer's GPU-path switches (``trainer.*`` in ``singer/conf/trainer/default.yaml``).

- ``device`` and ``precision``: the device, and bf16 autocast (:func:`autocast_dtype`);
- ``compile``: ``torch.compile`` of the backbone, with an eager fallback when compiling fails
  (:class:`Compiler`);
- ``attention``: the SDPA kernel family (:func:`sdpa_context`);
- ``channels_last`` and ``grad_checkpointing``: memory layout and activation recomputation
  (:func:`prepare_model`);
- ``threads``, ``tf32`` and ``fused_adamw``: :func:`configure_torch`, :func:`use_fused_adamw`.

Each switch leaves the training maths unchanged (up to float rounding); the tests in
``tests/test_gpu_path.py`` compare every one with the plain eager run.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from singer.cli import UserError

SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
_SDPA_KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


class DeviceError(UserError, RuntimeError):
    """The device asked for is not there."""


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; a named device must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device={spec} was asked for, but CUDA is not available",
            "use device=cpu or device=auto",
        )
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``trainer.precision`` (None: no autocast, fp32)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16
    raise ValueError(f"trainer.precision must be auto, fp32 or bf16, got '{precision}'")


def configure_torch(tc: Mapping, device: torch.device) -> None:
    """Process-wide settings: CPU threads (``trainer.threads``) and TF32 matmuls on CUDA."""
    if tc.get("threads"):
        torch.set_num_threads(int(tc["threads"]))
    if device.type == "cuda" and tc.get("tf32", True):
        torch.set_float32_matmul_precision(
            "high"
        )  # TF32 for the fp32 matmuls left outside autocast


def use_fused_adamw(setting, device: torch.device) -> bool:
    """``trainer.fused_adamw``: ``auto`` (or None) means fused on CUDA only."""
    return device.type == "cuda" if setting in ("auto", None) else bool(setting)


# -- attention --------------------------------------------------------------------------------
def sdpa_context(name: str | None):
    """A context that restricts ``scaled_dot_product_attention`` to one kernel family.

    ``auto`` (or None) lets torch choose (flash / memory-efficient / cuDNN on CUDA when the
    inputs allow, math otherwise). A named kernel that cannot run the inputs raises inside the
    forward pass, which is the point: it shows that kernel is not used.
    """
    name = "auto" if name in (None, "", "auto") else str(name)
    if name not in SDPA_BACKENDS:
        raise ValueError(
            f"trainer.attention must be one of {', '.join(SDPA_BACKENDS)}; got {name!r}"
        )
    if name == "auto":
        return contextlib.nullcontext()
    return sdpa_kernel([_SDPA_KERNELS[name]])


@contextlib.contextmanager
def forward_context(device: torch.device, amp_dtype: torch.dtype | None, attention: str | None):
    """Autocast to ``amp_dtype`` (none when None) under the SDPA kernel choice."""
    with (
        sdpa_context(attention),
        torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None),
    ):
        yield


# -- memory -----------------------------------------------------------------------------------
def enable_grad_checkpointing(model: torch.nn.Module) -> list[str]:
    """Call ``set_grad_checkpointing(True)`` on the outermost modules that have it (timm's
    method name; ``unet3d`` and ``dit`` backbones do). Returns their qualified names."""
    found: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") or outer == "" for outer in found):
            continue
        if callable(getattr(module, "set_grad_checkpointing", None)):
            module.set_grad_checkpointing(True)
            found.append(name)
    return found


def prepare_model(model: torch.nn.Module, tc: Mapping, name: str) -> None:
    """``trainer.channels_last`` and ``trainer.grad_checkpointing`` on a built model, in place
    (``name``: the model's name, for the warning when nothing can checkpoint)."""
    if tc.get("channels_last", False):
        model.to(memory_format=torch.channels_last)  # 4-D (conv) weights only
    if tc.get("grad_checkpointing", False) and not enable_grad_checkpointing(model):
        warnings.warn(
            f"trainer.grad_checkpointing=true, but no module of model '{name}' has "
            "set_grad_checkpointing(); training without it",
            RuntimeWarning,
            stacklevel=3,
        )


# -- compile ----------------------------------------------------------------------------------
def compile_target(model: torch.nn.Module) -> torch.nn.Module:
    """What ``trainer.compile`` compiles: the backbone (the bulk of the FLOPs), or the model
    itself when it has none. Front-ends, codecs and the diffusion step stay eager."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, torch.nn.Module) else model


class Compiler:
    """``trainer.compile``: ``torch.compile`` of one module's forward, in place, and the way
    back to eager when compiling fails.

    ``status`` is ``off``, ``compiled (<backend>)`` or ``eager fallback: <error>``. Compiling
    happens on the first call of the compiled forward; the caller runs its step again eagerly
    after :meth:`fall_back` when that call raises.
    """

    def __init__(self, tc: Mapping):
        self.enabled = bool(tc.get("compile", False))
        mode = tc.get("compile_mode") or None
        self.options = {
            "mode": None if mode == "default" else mode,
            "backend": tc.get("compile_backend") or "inductor",
        }
        self.eager_names = set(tc.get("compile_eager_modules") or ())
        self.status = "off"
        self._patched: list[torch.nn.Module] = []  # modules whose forward is set on the instance

    @property
    def active(self) -> bool:
        """Whether a compiled forward is in place."""
        return self.status.startswith("compiled")

    def compile(self, target: torch.nn.Module) -> None:
        """Compile ``target``'s forward in place (its state_dict keys stay the same).

        Submodules whose class is named in ``trainer.compile_eager_modules`` run eagerly inside
        the compiled forward (one graph break each): the ptwt wavelet transforms of the SFM
        cannot be traced by TorchDynamo.
        """
        eager = [m for m in target.modules() if type(m).__name__ in self.eager_names]
        eager = [m for m in eager if m is not target]
        self._patched = [target, *eager]
        try:
            for module in eager:
                module.forward = torch.compiler.disable(module.forward)
            target.forward = torch.compile(target.forward, **self.options)
        except Exception as err:  # e.g. an unknown backend, or a platform torch.compile lacks
            self.fall_back(err)
            return
        self.status = f"compiled ({self.options['backend']})"

    def fall_back(self, err: BaseException) -> None:
        """Back to the classes' own (eager) forwards, with a warning naming ``err``."""
        for module in self._patched:
            module.__dict__.pop("forward", None)
        self._patched = []
        self.status = f"eager fallback: {type(err).__name__}: {err}"[:500]
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        warnings.warn(
            f"torch.compile failed, training continues eagerly: {type(err).__name__}: {first_line}",
            RuntimeWarning,
            stacklevel=3,
        )
