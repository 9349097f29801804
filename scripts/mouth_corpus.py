"""Measure a talking-head corpus for the mouth model: every frame's mouth with the product's own face
mesh, and the speech analysis lipdub runs on every job, saved per clip as one .npz.

    python scripts/mouth_corpus.py --corpus ../shared/corpus --work /tmp/mouth_corpus

Used by scripts/train_mouth.py; each clip is measured once (delete its .npz to measure it again).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from lipdub.audio.fusion import analyse_detailed
from lipdub.face.analyse import analyse_template
from lipdub.face.landmarks import MOUTH_CORNERS, inter_ocular, lip_gap
from lipdub.media.audio import load_audio
from lipdub.media.limits import Limits
from lipdub.media.probe import probe

log = logging.getLogger("mouth_corpus")


def clips(corpus: Path) -> list[tuple[str, str]]:
    """(file name, speaker tag) of every clip in the corpus MANIFEST.tsv."""
    rows = []
    with open(corpus / "MANIFEST.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            tag = re.search(r"\[(S\d+)\]", row["speaker description"])
            rows.append((row["file"], tag.group(1) if tag else row["file"]))
    return rows


def mouth_measures(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: inner-lip gap and corner distance, both over the inter-ocular distance (NaN: no face)."""
    iod = inter_ocular(landmarks)
    gap = lip_gap(landmarks) / iod
    a, b = MOUTH_CORNERS
    width = np.linalg.norm(landmarks[:, a] - landmarks[:, b], axis=-1) / iod
    return gap.astype(np.float32), width.astype(np.float32)


def measure(path: Path, speaker: str, out: Path, cache: Path) -> None:
    limits = Limits(max_video_s=3600, max_audio_s=3600)
    info = probe(path, limits)
    avatar = analyse_template(info, info.fps, cache)
    gap, width = mouth_measures(avatar.landmarks)
    clip = load_audio(path, info=info)
    analysis, curves = analyse_detailed(clip)
    F = analysis.features
    np.savez_compressed(
        out, speaker=speaker, fps=float(info.fps), gap=gap, width=width, found=avatar.found,
        mel_db=F.mel_db, rms_db=F.rms_db, bands_db=F.bands_db, voicing=F.voicing, burst=F.burst,
        speech=analysis.speech, **{f"fusion_{k}": v.astype(np.float32) for k, v in curves.items()})
    log.info("%s: %d frames (%.0f%% with a face), %.1f s of speech", path.name, len(gap),
             100 * avatar.found.mean(), clip.duration)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lipdub_mouth_corpus")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a.work.mkdir(parents=True, exist_ok=True)
    cache = a.work / "avatar_cache"
    for name, speaker in clips(a.corpus):
        out = a.work / (Path(name).stem + ".npz")
        if not out.exists():
            measure(a.corpus / name, speaker, out, cache)
    log.info("Measured corpus in %s", os.fspath(a.work))


if __name__ == "__main__":
    main()
