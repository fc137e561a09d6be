"""``python -m singer.generate``: a face image + an audio file → an H.264/AAC mp4 with sound.

    python -m singer.generate --checkpoint runs/x --image face.png --audio song.wav --out song.mp4

Audio may be wav/flac/mp3/m4a/mp4 at any sample rate and channel count (it is resampled to
the model's rate, mono); the face may be a png/jpg of any size (centre-cropped to a square).
With ``--separate NAME`` the model is driven by a vocal separator's estimate of the voice, and
the mp4 keeps the original song as its soundtrack.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m singer.generate", description=__doc__.splitlines()[0]
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint .pt or a training run directory")
    p.add_argument("--image", required=True, help="face image (png/jpg, any size)")
    p.add_argument(
        "--audio", required=True, help="audio or video file with sound (wav/flac/mp3/m4a/mp4)"
    )
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--seed", type=int, default=0, help="fixes the sampling noise (default 0)")
    p.add_argument(
        "--steps", type=int, default=None, help="DDIM steps (default: the model config's)"
    )
    p.add_argument(
        "--guidance", type=float, default=None, help="CFG scale (default: the model config's)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--no-ema", action="store_true", help="use the raw weights instead of the EMA weights"
    )
    p.add_argument(
        "--separate",
        default="none",
        metavar="NAME",
        help="vocal separator for the conditioning audio (python -m singer.registry separator); "
        "the mp4 keeps the original soundtrack",
    )
    p.add_argument(
        "--separator-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the separator, e.g. checkpoint=/weights/hdemucs_high.pt (repeatable)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from singer.data.media import MediaError, read_audio, read_image, write_mp4
    from singer.inference import generate_video, load_model

    separator_args = None
    if args.separate != "none" or args.separator_arg:
        from singer.separation import check_separator

        try:  # an unknown name, a bad option or a missing weight file, before any work
            separator_args = check_separator(args.separate, args.separator_arg)
        except (KeyError, ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        loaded = load_model(args.checkpoint, device=args.device, use_ema=not args.no_ema)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        face = read_image(args.image)
    except (MediaError, OSError, ValueError) as err:
        print(f"error: cannot read face image {args.image}: {err}", file=sys.stderr)
        return 2
    try:
        audio = read_audio(args.audio, sample_rate=loaded.sample_rate)
    except (MediaError, OSError, ValueError) as err:
        print(f"error: cannot read audio {args.audio}: {err}", file=sys.stderr)
        return 2
    if len(audio) == 0:
        print(f"error: {args.audio} has no audio samples", file=sys.stderr)
        return 2
    condition = audio
    if separator_args is not None:  # the model hears the voice; the mp4 keeps the whole song
        from singer.separation import separate

        condition = separate(
            audio, args.separate, separator_args, sample_rate=loaded.sample_rate, progress=True
        )
    frames = generate_video(
        loaded, face, condition, steps=args.steps, guidance_scale=args.guidance, seed=args.seed
    )
    num_samples = round(len(frames) / loaded.fps * loaded.sample_rate)
    wave = np.pad(audio, (0, max(0, num_samples - len(audio))))[:num_samples]
    out = write_mp4(Path(args.out), frames, loaded.fps, wave, loaded.sample_rate)
    print(
        f"wrote {out}: {len(frames)} frames at {loaded.fps:g} fps ({len(frames) / loaded.fps:.2f} s), "
        f"audio {len(audio) / loaded.sample_rate:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
