"""``python -m singer.generate``: a face image + an audio file → an H.264/AAC mp4 with sound.

    python -m singer.generate --checkpoint runs/x --image face.png --audio song.wav --out song.mp4

Audio may be wav/flac/mp3/m4a/mp4 at any sample rate and channel count (it is resampled to
the model's rate, mono); the face may be a png/jpg of any size (centre-cropped to a square).
Frames are written to ``<out>.part`` as each clip is generated and the file is renamed to
``--out`` at the end, so memory stays flat for long songs and a failed run leaves its part
file. ``--out`` may not be an input, nor an existing folder (checked before any work).

With ``--separate NAME`` the model is driven by a vocal separator's estimate of the voice, and
the mp4 keeps the original song as its soundtrack.
"""

from __future__ import annotations

import argparse

from singer.cli import UserError, entry_point
from singer.safe_io import check_output

# The song is held in memory at the model's rate (16 kHz float32: 3.8 MB a minute); the
# frames are not (they stream to the file), so this bounds the whole run's memory.
MAX_SECONDS = 3600


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


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # lazy: start-up: these load torch and the video decoders (seconds), which `--help` does
    # without
    from singer.data.media import MediaError, read_audio, read_image
    from singer.inference import (
        check_sampling,
        load_model,
        resolve_checkpoint,
        write_video,
    )
    from singer.separation import separate, separator_from_command_line

    # Everything that can be checked before the model loads is, so a mistake costs nothing
    # and the inputs are never touched.
    check_sampling(args.steps, args.guidance, args.seed)
    separator_args = separator_from_command_line(args.separate, args.separator_arg)
    checkpoint = resolve_checkpoint(args.checkpoint)
    out = check_output(
        args.out,
        inputs=[checkpoint, args.checkpoint, args.image, args.audio],
        temp_suffixes=(".part",),
    )
    loaded = load_model(checkpoint, device=args.device, use_ema=not args.no_ema)
    try:
        face = read_image(args.image)
    except MediaError as err:
        raise UserError(f"cannot read face image {args.image}: {err.reason}", "give a png or jpg")
    try:
        audio = read_audio(args.audio, sample_rate=loaded.sample_rate, max_seconds=MAX_SECONDS)
    except MediaError as err:
        raise UserError(
            f"cannot read audio {args.audio}: {err.reason}",
            "give an audio or video file with sound (wav/flac/mp3/m4a/mp4) of at most "
            f"{MAX_SECONDS // 60} minutes (split longer ones)",
        )
    if len(audio) == 0:
        raise UserError(f"{args.audio} has no audio samples", "give a file with sound")
    condition = audio
    if separator_args is not None:  # the model hears the voice; the mp4 keeps the whole song
        condition = separate(
            audio, args.separate, separator_args, sample_rate=loaded.sample_rate, progress=True
        )
    frames = write_video(
        loaded,
        face,
        condition,
        out,
        steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        soundtrack=audio,
    )
    print(
        f"wrote {out}: {frames} frames at {loaded.fps:g} fps ({frames / loaded.fps:.2f} s), "
        f"audio {len(audio) / loaded.sample_rate:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
