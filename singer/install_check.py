"""Check that every heavy dependency loads and works: ``python -m singer.install_check``.

``make install`` ends with it. Each check imports one package and uses it for real (a compiled
extension that fails to load only shows up when it is called), so an install that resolved to
a pair of incompatible binaries fails here, with one line naming the package and what to do,
instead of deep inside the first training job.

All checks run in one child interpreter, each guarded, so one broken package cannot hide
another. If that child dies outright (a crash inside a C extension), every check is rerun in an
interpreter of its own to name the package that crashed.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from collections.abc import Callable

FIX = "run `make clean install` (reinstalls from uv.lock); if it persists, run `make lock` and report the pair"


def _torch() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import torch

    x = torch.randn(8, 8)
    torch.linalg.svd(x)
    torch.nn.functional.scaled_dot_product_attention(x[None, None], x[None, None], x[None, None])
    return torch.__version__


def _torchaudio() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import torch
    import torchaudio

    # Building and calling a transform loads libtorchaudio.so, the library that broke
    # when torchaudio 2.11.1 was paired with torch 2.11.0.
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, n_mels=40)
    mel(torch.randn(1, 16000))
    torchaudio.functional.lowpass_biquad(torch.randn(1, 1600), 16000, 1000.0)
    torchaudio.models.wav2vec2_base()
    return torchaudio.__version__


def _torchvision() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import torch
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 5.0, 5.0]])
    torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)  # a compiled operator
    torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    return torchvision.__version__


def _av() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        out.mux(audio.encode())
    buf.seek(0)
    with av.open(buf) as inp:
        assert sum(1 for _ in inp.decode(video=0)) == 3
    return av.__version__


def _decord() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import decord

    decord.bridge.set_bridge("native")
    return decord.__version__


def _ptwt() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import ptwt
    import torch

    coeffs = ptwt.wavedec(torch.randn(1, 64), "db2", level=2)
    ptwt.waverec(coeffs, "db2")
    return getattr(ptwt, "__version__", "ok")


def _mlflow() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import mlflow

    return mlflow.__version__


def _optuna() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    return optuna.__version__


def _submitit() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import submitit

    return submitit.__version__


def _hydra() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import hydra
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="singer.conf", version_base="1.3"):
        compose(config_name="train")
    return hydra.__version__


def _diffusers() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import diffusers

    diffusers.DDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    return diffusers.__version__


def _timm() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import timm
    import torch
    from timm.layers import Mlp

    Mlp(8, 16)(torch.randn(2, 8))
    return timm.__version__


def _cv2() -> str:
    # lazy: optional: the import is the check (a missing package is reported, not fatal)
    import cv2

    cascade = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    if cv2.CascadeClassifier(cascade).empty():
        raise RuntimeError("OpenCV ships no Haar cascades (opencv-python-headless 5.x?)")
    return cv2.__version__


CHECKS: dict[str, Callable[[], str]] = {
    "torch": _torch,
    "torchaudio": _torchaudio,
    "torchvision": _torchvision,
    "av": _av,
    "decord": _decord,
    "ptwt": _ptwt,
    "mlflow": _mlflow,
    "optuna": _optuna,
    "submitit": _submitit,
    "hydra-core": _hydra,
    "diffusers": _diffusers,
    "timm": _timm,
    "opencv-python-headless": _cv2,
}


def run_one(name: str) -> tuple[bool, str]:
    """Run one check in this process; (ok, version or a one-line reason)."""
    try:
        return True, CHECKS[name]()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        return False, reason[:300]


def _child(names: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "singer.install_check", "--in-process", "--only", *names]
    return subprocess.run(cmd, capture_output=True, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m singer.install_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--only", nargs="+", choices=sorted(CHECKS), help="check only these packages"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="run the checks in this interpreter"
    )
    args = parser.parse_args(argv)
    names = args.only or list(CHECKS)
    if args.in_process:
        failed = 0
        for name in names:
            ok, detail = run_one(name)
            failed += not ok
            print(
                f"ok {name} {detail}" if ok else f"error: {name} does not work: {detail} — {FIX}",
                flush=True,
            )
        return 1 if failed else 0

    start = time.perf_counter()
    proc = _child(names)
    lines = proc.stdout.splitlines()
    if proc.returncode < 0:  # a crash: find the package, one interpreter each
        lines = []
        for name in names:
            one = _child([name])
            if one.returncode < 0:
                lines.append(
                    f"error: {name} does not work: the interpreter died with signal {-one.returncode} — {FIX}"
                )
            else:
                lines += one.stdout.splitlines()
    print("\n".join(lines))
    failed = sum(line.startswith("error:") for line in lines)
    if failed or proc.returncode:
        print(f"install check: {failed or 'some'} of {len(names)} packages failed", file=sys.stderr)
        return 1
    print(
        f"install check: all {len(names)} packages load and work ({time.perf_counter() - start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
