"""The studio's command lines: ``python app.py``, ``lipdub serve`` and ``lipdub batch``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from studio_support import REPO, mp4_facts, need_media, short_audio


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **_keep_env()})


def _keep_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("HOME", "LIPDUB_CACHE", "LIPDUB_SHARED", "TMPDIR")}


def test_entry_points_document_the_options():
    for cmd in (["app.py", "--help"], ["-m", "lipdub", "serve", "--help"]):
        out = _run(*cmd, timeout=120)
        assert out.returncode == 0, out.stderr
        for opt in ("--port", "--host", "--device", "--workers", "--data-dir", "--retention-days"):
            assert opt in out.stdout, (cmd, opt)


@pytest.mark.slow
def test_batch_one_audio_two_faces(tmp_path):
    photo, photo2 = need_media("portrait_474.png", "portrait_624.jpg")
    audio = short_audio(tmp_path / "speech.wav", 1.5)
    out = _run("-m", "lipdub", "batch", "--audio", str(audio), "--face", str(photo), "--face", str(photo2),
               "-o", str(tmp_path / "out"), "--device", "cpu")
    assert out.returncode == 0, out.stderr[-3000:]
    files = sorted((tmp_path / "out").glob("*.mp4"))
    assert [f.name for f in files] == ["001_portrait_474__speech.mp4", "002_portrait_624__speech.mp4"]
    for f in files:
        facts = mp4_facts(f)
        assert facts["video"] and facts["audio"] and abs(facts["duration"] - 1.5) < 0.3
    assert "2/2 video(s) written" in out.stderr
    bad = _run("-m", "lipdub", "batch", "--audio", str(audio), "--audio", str(audio), "--face", str(photo),
               "--face", str(photo2), "-o", str(tmp_path / "out2"), timeout=120)
    assert bad.returncode != 0 and "one audio with many faces" in bad.stderr
