"""``lipdub batch``: one audio with many faces, or many audios with one face, into an output folder."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import typer

from lipdub.commands._limits import MAX_AUDIO_S, MAX_SIDE, MAX_SIZE_MB, MAX_VIDEO_S, limits_from

log = logging.getLogger("lipdub.batch")

_MEDIA_EXT = {".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".mp4", ".mov", ".mkv", ".webm", ".avi",
              ".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given; folders become their media files, sorted."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in _MEDIA_EXT))
        else:
            out.append(p)
    return out


def _stem(p: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", p.stem)[:40] or "x"


def register(app: typer.Typer) -> None:
    @app.command("batch")
    def batch_cmd(
        audio: list[Path] = typer.Option(..., "--audio", "-a", help="Speech file(s) or a folder of them."),
        face: list[Path] = typer.Option(..., "--face", "-f", help="Template video(s)/photo(s) or a folder."),
        out_dir: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
        engine: str = typer.Option("auto"),
        quality: str = typer.Option("balanced"),
        head_motion: bool = typer.Option(True, "--head-motion/--still", help="Photos: sway and nod slightly, or "
                                         "keep the head still."),
        keep_going: bool = typer.Option(True, help="Go on with the next item when one fails."),
        max_audio_s: float = MAX_AUDIO_S,
        max_video_s: float = MAX_VIDEO_S,
        max_side: int = MAX_SIDE,
        max_size_mb: float = MAX_SIZE_MB,
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        """Render every pair: one audio x many faces, or many audios x one face."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        import lipdub
        from lipdub.errors import InputError, LipdubError
        from lipdub.logs import setup_logging
        from lipdub.studio.jobs.service import AUDIO, FACE, ValidationError, check_media

        setup_logging(verbose)
        audios, faces = _expand(audio), _expand(face)
        if not audios or not faces:
            raise InputError("Give at least one audio and one face (files or folders with media).")
        if len(audios) > 1 and len(faces) > 1:
            raise InputError("Give one audio with many faces, or many audios with one face.")
        limits = limits_from(max_size_mb, max_audio_s, max_video_s, max_side)
        try:  # check every input before rendering anything, against the limits the renders use
            for a in audios:
                check_media(a, AUDIO, limits=limits)
            for f in faces:
                check_media(f, FACE, limits=limits)
        except ValidationError as e:
            raise InputError(str(e)) from e
        out_dir.mkdir(parents=True, exist_ok=True)
        pairs = [(a, f) for a in audios for f in faces]
        failed: list[tuple[str, str]] = []
        t0 = time.monotonic()
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn()) as bar:
            overall = bar.add_task(f"0/{len(pairs)}", total=len(pairs))
            item = bar.add_task("", total=1.0)
            for i, (a, f) in enumerate(pairs, 1):
                name = f"{i:03d}_{_stem(f)}__{_stem(a)}.mp4"
                bar.update(overall, description=f"{i}/{len(pairs)} {name}")

                def progress(p, _item=item) -> None:  # noqa: ANN001
                    bar.update(_item, completed=p.fraction, description=f"  {p.stage}")

                try:
                    lipdub.generate(a, f, out_dir / name, device=device, engine=engine, quality=quality,
                                    head_motion=head_motion, progress=progress, limits=limits)
                except LipdubError as e:
                    failed.append((name, str(e)))
                    log.error("%s: %s", name, e)
                    if not keep_going:
                        raise
                bar.update(overall, advance=1)
        ok = len(pairs) - len(failed)
        log.info("%d/%d video(s) written to %s in %.0f s.", ok, len(pairs), out_dir, time.monotonic() - t0)
        if failed:
            raise typer.Exit(1)
