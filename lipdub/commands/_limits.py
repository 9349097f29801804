"""The input limits `generate` and `batch` both take, so the two commands accept the same files."""

from __future__ import annotations

import typer

from lipdub.media.limits import MB, Limits

MAX_AUDIO_S = typer.Option(1800.0, help="Longest accepted speech, seconds (0: no limit).")
MAX_VIDEO_S = typer.Option(600.0, help="Longest accepted template video, seconds (0: no limit).")
MAX_SIDE = typer.Option(4096, help="Largest accepted picture side, pixels (0: no limit).")
MAX_SIZE_MB = typer.Option(2048.0, help="Largest accepted input file, MB (0: no limit).")


def limits_from(max_size_mb: float, max_audio_s: float, max_video_s: float, max_side: int) -> Limits:
    return Limits(max_bytes=int(max_size_mb * MB), max_audio_s=max_audio_s, max_video_s=max_video_s,
                  max_side=max_side)
