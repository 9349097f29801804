"""`lipdub generate`: one speech file + one video or photo -> one MP4."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lipdub.commands._limits import MAX_AUDIO_S, MAX_SIDE, MAX_SIZE_MB, MAX_VIDEO_S, limits_from
from lipdub.logs import setup_logging

log = logging.getLogger("lipdub")


def register(app: typer.Typer) -> None:
    @app.command()
    def generate(
        audio: Path = typer.Option(..., "--audio", "-a", help="Speech: wav, mp3, m4a, aac, flac, ogg, opus, ... or a video's sound track."),
        face: Path = typer.Option(..., "--face", "-f", help="Template: a video (mp4, mov, mkv, ...) or a photo (png, jpg, webp, bmp)."),
        output: Path = typer.Option(..., "--output", "-o", help="Where to write the MP4."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
        engine: str = typer.Option("auto", help="Mouth engine: auto, warp, retrieval or wav2lip."),
        quality: str = typer.Option("balanced", help="fast, balanced or best (encoder presets)."),
        fps: float | None = typer.Option(None, help="Output frame rate (default: the template's; 25 for photos)."),
        text: str | None = typer.Option(None, help="Transcript of the speech, for precise English timing."),
        weights: Path | None = typer.Option(None, help="Checkpoint for neural engines (e.g. wav2lip.pth)."),
        head_motion: bool = typer.Option(True, "--head-motion/--still", help="Photos: sway and nod slightly, or "
                                         "keep the head still."),
        cache_dir: Path | None = typer.Option(None, help="Avatar cache folder (default ~/.cache/lipdub)."),
        max_audio_s: float = MAX_AUDIO_S,
        max_video_s: float = MAX_VIDEO_S,
        max_side: int = MAX_SIDE,
        max_size_mb: float = MAX_SIZE_MB,
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more detail."),
    ) -> None:
        """Make the person in FACE speak AUDIO and write an MP4."""
        setup_logging(verbose)
        from lipdub.pipeline import generate as run

        limits = limits_from(max_size_mb, max_audio_s, max_video_s, max_side)

        if text is None:
            side = audio.with_suffix(".txt")
            if side.is_file():
                text = side.read_text(encoding="utf-8", errors="replace").strip() or None
        with Progress(TextColumn("[bold]{task.fields[stage]:<20}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task("lipdub", total=1.0, stage="starting")
            result = run(audio, face, output, device=device, engine=engine, quality=quality, fps=fps, text=text,
                         weights=weights, cache_dir=cache_dir, limits=limits, head_motion=head_motion,
                         progress=lambda p: bar.update(task, completed=p.fraction, stage=p.stage))
        log.info("Done: %s (%.2f s of video, %d frames, %.1f s)", result.output, result.duration, result.frames,
                 result.seconds)
