"""``lipdub analyse-audio``: speech -> per-frame mouth track (JSON) and a diagnostic plot.

The transcript comes from ``--text``; without it, a ``.txt`` file beside the audio with the same
stem (``speech.wav`` -> ``speech.txt``) is used when present, enabling forced alignment.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import typer

from lipdub.errors import InputError

log = logging.getLogger(__name__)


def transcript_for(audio: Path, text: str | None) -> str | None:
    """The transcript to align: ``text`` if given, else the sibling ``<stem>.txt`` if it exists."""
    if text is not None:
        return text.strip() or None
    side = audio.with_suffix(".txt")
    if side.is_file():
        content = side.read_text(encoding="utf-8", errors="replace").strip()
        if content:
            log.info("Using the transcript in %s.", side.name)
            return content
    return None


def plot_track(path: Path, clip, analysis, track) -> None:  # noqa: ANN001 - internal types
    """Waveform, phones and the per-frame track on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    dur = clip.duration
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(max(8.0, min(40.0, dur * 2.5)), 6), sharex=True,
                                   gridspec_kw={"height_ratios": [1, 2]})
    step = max(1, len(clip.samples) // 200_000)  # decimate for drawing only
    ts = np.arange(0, len(clip.samples), step) / clip.sample_rate
    ax0.plot(ts, clip.samples[::step], color="0.6", lw=0.4)
    ax0.set_ylabel("waveform")
    for p in analysis.phones:
        if p.label != "SIL":
            ax0.axvspan(p.start, p.end, color="C0", alpha=0.06)
            ax0.text((p.start + p.end) / 2, 0.9, p.label, fontsize=6, ha="center", transform=ax0.get_xaxis_transform())
    t = track.times
    ax1.fill_between(t, 0, track.speech.astype(float) * 1.05, step="post", color="0.9", label="speech")
    ax1.plot(t, track.open, drawstyle="steps-post", label="open", lw=1.4)
    ax1.plot(t, track.width, drawstyle="steps-post", label="width", lw=0.8)
    ax1.plot(t, track.round, drawstyle="steps-post", label="round", lw=0.8)
    ax1.plot(t, track.closed, drawstyle="steps-post", label="closed", lw=0.8, color="k")
    ax1.set_ylim(-1.05, 1.1)
    ax1.set_xlabel("time (s)")
    ax1.legend(loc="upper right", fontsize=7, ncol=5)
    src = "forced alignment" if analysis.aligned else f"allphone, confidence {analysis.confidence:.2f}"
    ax0.set_title(f"MouthTrack at {track.fps:g} fps ({src})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(audio: Path, fps: float, text: str | None = None, json_out: Path | None = None,
        plot: Path | None = None) -> None:
    """The command's work, callable in-process (bench/score_audio.py uses it)."""
    from lipdub.audio.fusion import analyse_detailed, mouth_track
    from lipdub.media.audio import load_audio

    audio, json_out, plot = Path(audio), json_out and Path(json_out), plot and Path(plot)
    if not audio.is_file():
        raise InputError(f"{audio} does not exist; give the path of a speech recording.")
    if not (math.isfinite(fps) and 0 < fps <= 240):
        raise InputError(f"--fps {fps} is not a usable frame rate; give a value such as 25 or 30.")
    if json_out is None and plot is None:
        raise InputError("Nothing to write; give --json OUT.json and/or --plot OUT.png.")
    clip = load_audio(audio)
    t0 = time.perf_counter()
    analysis, curves = analyse_detailed(clip, transcript_for(audio, text))
    n_frames = int(math.ceil(clip.duration * fps - 1e-9))
    track = mouth_track(analysis, curves, fps, n_frames)
    log.info("Analysed %.1f s of audio in %.2f s (%d frames at %g fps, %s).", clip.duration,
             time.perf_counter() - t0, n_frames, fps, "aligned" if analysis.aligned else "allphone")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        track.save_json(json_out)
        log.info("Wrote %s.", json_out)
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_track(plot, clip, analysis, track)
        log.info("Wrote %s.", plot)


def register(app: typer.Typer) -> None:
    @app.command("analyse-audio")
    def analyse_audio(
        audio: Path = typer.Argument(..., help="Speech recording (any format FFmpeg reads)."),
        fps: float = typer.Option(..., "--fps", help="Video frame rate of the track."),
        text: str | None = typer.Option(None, "--text", help="English transcript for forced alignment "
                                        "(default: AUDIO's stem + .txt if that file exists)."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the track as JSON here."),
        plot: Path | None = typer.Option(None, "--plot", help="Write a PNG of the track over the waveform."),
    ) -> None:
        """Analyse speech into per-frame mouth targets (open, width, round, closed, speech)."""
        run(audio, fps, text, json_out, plot)
