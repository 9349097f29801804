"""The base install (``pip install lipdub``) has no torch: the default engines render on the CPU without it,
and what does need it (a GPU, the wav2lip engine) says in one line which extra to install. Each command runs
in a child process whose imports cannot find torch, as in a venv without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from studio_support import REPO, mp4_facts, need_media, short_audio

# Loaded by the child's `site` before anything else: torch cannot be found, as in a venv without it.
HIDE_TORCH = '''
import sys


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
'''


@pytest.fixture()
def without_torch(tmp_path: Path):
    hook = tmp_path / "hide_torch"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HIDE_TORCH)

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LIPDUB_CACHE", "LIPDUB_SHARED", "TMPDIR")}
        # COLUMNS: wide enough that `lipdub info`'s table does not wrap its sentences.
        env = {"PATH": "/usr/bin:/bin", **keep, "COLUMNS": "300",
               "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path, env=env)

    return run


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_the_hook_hides_torch(without_torch):
    done = without_torch("-c", "import torch")
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr


def test_generate_renders_on_the_cpu_without_torch(without_torch, tmp_path):
    photo = need_media("portrait_474.png")[0]
    audio = short_audio(tmp_path / "speech.wav", 1.5)
    out = tmp_path / "out.mp4"
    done = without_torch("-m", "lipdub", "generate", "--audio", str(audio), "--face", str(photo), "-o", str(out),
                         "--device", "auto")
    assert done.returncode == 0, done.stderr[-3000:]
    facts = mp4_facts(out)
    assert facts["video"] and facts["audio"] and abs(facts["duration"] - 1.5) < 0.3
    assert "Using device: cpu" in done.stderr


@pytest.mark.parametrize("option", [["--device", "cuda"], ["--device", "cuda:1"], ["--engine", "wav2lip"]])
def test_what_needs_torch_names_the_extra_in_one_line(without_torch, tmp_path, option):
    photo = need_media("portrait_474.png")[0]
    audio = short_audio(tmp_path / "speech.wav", 1.0)
    done = without_torch("-m", "lipdub", "generate", "--audio", str(audio), "--face", str(photo), "-o",
                         str(tmp_path / "out.mp4"), *option)
    assert done.returncode != 0
    lines = _error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("[ERROR]") and "pip install 'lipdub[torch]'" in lines[0]
    assert not (tmp_path / "out.mp4").exists()


def test_info_says_torch_is_missing(without_torch):
    done = without_torch("-m", "lipdub", "info", "--device", "cpu", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "PyTorch is not installed" in done.stdout and "pip install 'lipdub[torch]'" in done.stdout
    assert "wav2lip (needs torch)" in done.stdout


def test_scale_out_without_celery_names_the_extra(tmp_path):
    """Celery is an extra too; without it `--broker` is refused in one line."""
    hook = tmp_path / "hide_celery"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HIDE_TORCH.replace('"torch"', '"celery"').replace('"torch."', '"celery."'))
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)),
           "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}
    done = subprocess.run([sys.executable, str(REPO / "app.py"), "--port", "0", "--broker", "redis://127.0.0.1:1/0",
                           "--data-dir", str(tmp_path / "data"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode != 0
    assert "pip install 'lipdub[scale]'" in done.stderr.splitlines()[-1], done.stderr[-2000:]
