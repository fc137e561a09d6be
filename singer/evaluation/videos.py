"""Score any system's videos with the harness's protocol: ``python -m singer.evaluate videos``.

    python -m singer.evaluate videos GEN_DIR --truth DATA_DIR --out OUT_DIR [--reencode 18 28]

``GEN_DIR`` holds one mp4 per truth clip, named ``<clip stem>.mp4``, made by any system (ours
or an external model). ``DATA_DIR`` is a SynthSing folder (``meta.jsonl`` + ``clips/*.mp4``) or a
prepared cache (``index.jsonl`` + ``clips/*.npz``). Every generated video is read at the truth's
frame rate, centre-cropped to a square and resized to the truth's size, and scored against its
truth clip by the protocol's metrics; the audio-dependent metrics use the generated mp4's *own*
audio track. Values go clip → unit (speaker) and every interval resamples units, exactly as in
checkpoint evaluation, and the output is the same ``metrics.json``.

Missing, extra, unreadable or wrong-length videos each get one line in the report (and in
``metrics.json`` under ``files``); the rest are scored.

``--reencode CRF ...`` re-encodes every generated video as H.264 at each CRF (PyAV, its audio
as AAC) and scores it again: ``reencode/crf<N>/<key>`` is the paired change of each per-clip
metric, with its interval, i.e. how much of a difference between two systems a codec alone can
make.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from singer.data.dataset import clip_group, load_clip, read_index
from singer.data.media import MediaError, fit_length, read_audio, read_video, write_mp4
from singer.evaluation.inputs import EvaluationError
from singer.evaluation.protocol import EvalProtocol, load_protocol
from singer.evaluation.runner import EvalResult, _clip_level, build_metrics, summarise_units
from singer.evaluation.units import unit_interval
from singer.metrics.base import EvalBatch
from singer.metrics.motion import nanmean

FACE_CUES = ("mouth_open", "mouth_width", "brow", "sway", "eye_close", "nod")
CAUSES = ("loudness", "pitch", "vibrato_phase", "f2", "held", "onset")


@dataclass
class TruthClip:
    """One truth clip: frames ``F×H×W×3`` uint8, its speaker (unit), fps, and SynthSing truth."""

    stem: str
    speaker: str
    fps: float
    sample_rate: int
    frames: np.ndarray
    cues: np.ndarray | None  # F×K (FACE_CUES order)
    causes: np.ndarray | None  # F×C (CAUSES order)


def _truth_matrix(truth: dict | None, names, frames: int) -> np.ndarray | None:
    if not truth or not all(n in truth for n in names):
        return None
    matrix = np.stack([np.asarray(truth[n], dtype=np.float32)[:frames] for n in names], axis=1)
    return matrix if len(matrix) == frames else None


def load_truth(data_dir: str | Path) -> tuple[list[dict], str]:
    """The truth clip records of ``data_dir`` and its kind (``"synthsing"`` | ``"cache"``).

    Records are light (no frames): ``{stem, speaker, fps, sample_rate, num_frames, truth, load}``
    where ``load()`` decodes the frames when the clip is scored.
    """
    root = Path(data_dir)
    if (root / "index.jsonl").is_file():
        records = []
        for entry in read_index(root):
            path = root / entry["file"]
            records.append(
                {
                    "stem": str(entry["clip_id"]),
                    "speaker": clip_group(entry),
                    "fps": float(entry["fps"]),
                    "sample_rate": int(entry["sample_rate"]),
                    "num_frames": int(entry["num_frames"]),
                    "truth": entry.get("truth"),
                    "load": lambda path=path: np.asarray(load_clip(path)[0]),
                }
            )
        return records, "cache"
    meta = root / "meta.jsonl"
    if meta.is_file():
        records = []
        for line in meta.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            path = root / record["file"]
            fps = float(record["fps"])
            records.append(
                {
                    "stem": Path(record["file"]).stem,
                    "speaker": f"speaker:{record['speaker_id']}",
                    "fps": fps,
                    "sample_rate": int(record["sample_rate"]),
                    "num_frames": int(record["num_frames"]),
                    "truth": record.get("truth"),
                    "load": lambda path=path, fps=fps: read_video(path, fps=fps)[0],
                }
            )
        return records, "synthsing"
    raise EvaluationError(
        f"{root} is neither a SynthSing folder (meta.jsonl) nor a prepared cache (index.jsonl)"
    )


def _square_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """``F×H×W×3`` uint8 → centre square resized to ``F×size×size×3`` (area/bilinear)."""
    f, h, w, _ = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = frames[:, top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    x = torch.from_numpy(np.ascontiguousarray(square)).permute(0, 3, 1, 2).float()
    mode = "area" if side > size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    y = torch.nn.functional.interpolate(x, size=(size, size), mode=mode, **kwargs)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _to_video(frames: np.ndarray) -> torch.Tensor:
    """``F×H×W×3`` uint8 → ``1×3×F×H×W`` float in [-1, 1]."""
    return (torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1.0).permute(
        3, 0, 1, 2
    )[None]


def reencode(frames: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int, crf: int):
    """``(frames, audio)`` after an H.264 (CRF ``crf``) + AAC round trip through PyAV."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reencoded.mp4"
        even = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
        write_mp4(path, even, fps, audio, sample_rate, crf=int(crf))
        out, _ = read_video(path, fps=fps)
        sound = read_audio(path, sample_rate, num_samples=len(audio))
    return out[: len(frames)], sound


def read_generated(path: Path, truth: dict, tolerance: int) -> tuple[np.ndarray, np.ndarray]:
    """A generated video's frames (at the truth's fps) and its own audio, checked for length."""
    try:
        frames, _ = read_video(path, fps=truth["fps"])
    except (MediaError, OSError, RuntimeError, ValueError) as err:
        raise EvaluationError(f"unreadable video ({err})") from None
    want = truth["num_frames"]
    if abs(len(frames) - want) > tolerance:
        raise EvaluationError(
            f"wrong length: {len(frames)} frames at {truth['fps']:g} fps, the truth clip has {want} "
            f"(±{tolerance} allowed)"
        )
    if len(frames) < want:  # within tolerance: hold the last frame
        frames = np.concatenate([frames, np.repeat(frames[-1:], want - len(frames), axis=0)])
    samples = round(want / truth["fps"] * truth["sample_rate"])
    try:
        audio = read_audio(path, truth["sample_rate"], num_samples=samples)
    except MediaError:
        audio = None  # scored without audio-dependent metrics' input: they see silence
    if audio is None:
        audio = np.zeros(samples, dtype=np.float32)
    return frames[:want], fit_length(audio, samples)


def evaluate_videos(
    gen_dir: str | Path,
    truth_dir: str | Path,
    *,
    protocol: EvalProtocol | None = None,
    reencode_crfs: tuple[int, ...] = (),
    length_tolerance: int = 1,
    progress: bool = True,
) -> tuple[EvalResult, list[dict]]:
    """Score ``gen_dir``'s mp4s against ``truth_dir``; ``(result, per-file lines)``.

    The per-file lines are ``{"file", "status": ok | missing | extra | error, "reason"}``.
    """
    gen_dir = Path(gen_dir)
    if not gen_dir.is_dir():
        raise EvaluationError(f"{gen_dir} is not a folder of generated videos")
    protocol = protocol or load_protocol()
    records, kind = load_truth(truth_dir)
    if not records:
        raise EvaluationError(f"{truth_dir} holds no truth clips")
    rates = {(r["fps"], r["sample_rate"]) for r in records}
    if len(rates) != 1:
        raise EvaluationError(f"{truth_dir} mixes frame/sample rates {sorted(rates)}")
    ((fps, sample_rate),) = rates
    metric_set = build_metrics(protocol)
    crf_sets = {crf: build_metrics(protocol) for crf in reencode_crfs}

    by_stem = {r["stem"]: r for r in records}
    files: list[dict] = []
    for path in sorted(gen_dir.iterdir()):
        if path.suffix.lower() == ".mp4" and path.stem not in by_stem:
            files.append(
                {
                    "file": path.name,
                    "status": "extra",
                    "reason": "no truth clip of this name; ignored",
                }
            )
    clip_order: list[str] = []
    unit_of_clip: dict[str, str] = {}
    for record in tqdm(records, desc="evaluate videos", unit="video", disable=not progress):
        path = gen_dir / f"{record['stem']}.mp4"
        if not path.is_file():
            files.append(
                {
                    "file": path.name,
                    "status": "missing",
                    "reason": "no generated video for this truth clip",
                }
            )
            continue
        try:
            frames, audio = read_generated(path, record, length_tolerance)
        except EvaluationError as err:
            files.append({"file": path.name, "status": "error", "reason": str(err)})
            continue
        truth_frames = np.asarray(record["load"]())[: record["num_frames"]]
        size = truth_frames.shape[1]
        frames = _square_resize(frames, size)
        cues = _truth_matrix(record["truth"], FACE_CUES, record["num_frames"])
        causes = _truth_matrix(record["truth"], CAUSES, record["num_frames"])

        def batch_of(
            video_frames, sound, record=record, truth_frames=truth_frames, cues=cues, causes=causes
        ):
            return EvalBatch(
                generated=_to_video(video_frames),
                reference=_to_video(truth_frames),
                audio=torch.from_numpy(np.asarray(sound, dtype=np.float32))[None],
                sample_rate=sample_rate,
                fps=fps,
                cues=None if cues is None else torch.from_numpy(cues)[None],
                has_cues=torch.tensor([cues is not None]),
                clip_ids=[record["stem"]],
                starts=[0],
                causes=None if causes is None else torch.from_numpy(causes)[None],
            )

        for metric in metric_set.values():
            metric.update(batch_of(frames, audio))
        for crf, metrics in crf_sets.items():
            coded, coded_audio = reencode(frames, audio, fps, sample_rate, crf)
            for metric in metrics.values():
                metric.update(batch_of(_square_resize(coded, size), coded_audio))
        clip_order.append(record["stem"])
        unit_of_clip[record["stem"]] = record["speaker"]
        files.append({"file": path.name, "status": "ok", "reason": None})
    if not clip_order:
        raise EvaluationError(f"no video in {gen_dir} could be scored (see the per-file lines)")

    clip_values: dict[str, list[dict[str, float]]] = {}
    set_values: dict[str, float] = {}
    for metric in metric_set.values():
        for key, values in _clip_level(metric, clip_order).items():
            clip_values[key] = [values]
        for key, value in metric.compute().items():
            set_values[key] = float(value)
    for crf, metrics in crf_sets.items():
        for metric in metrics.values():
            for key, values in _clip_level(metric, clip_order).items():
                if key in clip_values:
                    base = clip_values[key][0]
                    clip_values[f"reencode/crf{crf}/{key}"] = [
                        {c: values.get(c, np.nan) - base.get(c, np.nan) for c in base}
                    ]
    units, intervals = summarise_units(clip_values, unit_of_clip, protocol)
    metrics, ci, n, unit_kind = {}, {}, {}, {}
    for key, interval in intervals.items():
        metrics[key], ci[key], n[key] = interval.estimate, (interval.lo, interval.hi), interval.n
        unit_kind[key] = "speakers"
    for key, value in set_values.items():
        if key not in metrics:  # a set-level metric: one value, no interval
            interval = unit_interval({0: value})
            metrics[key], ci[key], n[key] = nanmean([value]), (interval.lo, interval.hi), 1
            unit_kind[key] = "sets"
    result = EvalResult(
        metrics=metrics,
        ci=ci,
        protocol=protocol,
        model=f"videos:{gen_dir.name}",
        step=0,
        checkpoint=str(gen_dir),
        split=f"{kind}:{Path(truth_dir).name}",
        clip_ids=sorted(unit_of_clip),
        n=n,
        units=units,
        unit_of_clip=unit_of_clip,
        unit_kind=unit_kind,
        windows=len(clip_order),
        source="videos",
        notes=[f"{f['file']}: {f['status']} — {f['reason']}" for f in files if f["status"] != "ok"],
    )
    return result, files
