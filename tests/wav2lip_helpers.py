"""Shared helpers for the Wav2Lip tests: the reference facts in ../shared/wav2lip."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Same convention as tests/conftest.py on main: ../shared beside the repository, or $LIPDUB_SHARED.
SHARED = Path(os.environ.get("LIPDUB_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
WAV2LIP_DIR = SHARED / "wav2lip"
MEDIA_DIR = SHARED / "media"

needs_shared = pytest.mark.skipif(not (WAV2LIP_DIR / "checkpoint_keys.tsv").exists(),
                                  reason=f"shared Wav2Lip reference material not found at {WAV2LIP_DIR}")


def checkpoint_keys() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in (WAV2LIP_DIR / "checkpoint_keys.tsv").read_text().splitlines()[1:]:
        name, shape, dtype = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        rows.append((name, dims, dtype))
    return rows


def deterministic_state_dict() -> dict[str, torch.Tensor]:
    """The README's deterministic weights, built from the key list alone (not from our model)."""
    sd: dict[str, torch.Tensor] = {}
    for k, (name, shape, _dtype) in enumerate(checkpoint_keys()):
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(0, dtype=torch.int64)
            continue
        n = int(np.prod(shape)) if shape else 1
        s = np.sin(0.1 * np.arange(n, dtype=np.float64) + k)
        if name.endswith("running_var"):
            v = 1 + 0.5 * s**2
        elif len(shape) > 1:
            v = s / np.sqrt(n / shape[0])
        else:
            v = 0.1 * s
        sd[name] = torch.from_numpy(v.reshape(shape).astype(np.float32))
    return sd


def deterministic_inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(mel, face) per the README."""
    face = 0.5 + 0.5 * np.sin(0.01 * np.arange(batch * 6 * 96 * 96, dtype=np.float64))
    mel = 4 * np.sin(0.05 * np.arange(batch * 80 * 16, dtype=np.float64))
    return (torch.from_numpy(mel.astype(np.float32).reshape(batch, 1, 80, 16)),
            torch.from_numpy(face.astype(np.float32).reshape(batch, 6, 96, 96)))


def save_released_checkpoint(path: Path) -> Path:
    """Deterministic weights saved as the released checkpoints are: a dict with ``state_dict``,
    DataParallel ``module.`` names, no BatchNorm counters, plus the optimizer and step counters."""
    sd = {f"module.{k}": v for k, v in deterministic_state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                "global_step": 1000, "global_epoch": 3}, path)
    return path
