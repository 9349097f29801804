"""Loading a user's Wav2Lip checkpoint, with one-line errors that say what is wrong with the file.

Accepted: the released format (a dict whose ``state_dict`` holds the generator's weights, keys
possibly prefixed ``module.`` by DataParallel) or a bare state dict. ``num_batches_tracked``
entries may be absent (they do not affect eval-mode inference); everything else must match.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from lipdub.errors import ModelError
from lipdub.render.wav2lip.model import Wav2Lip

log = logging.getLogger(__name__)

_PREFIX = "module."
_BN_COUNTER = "num_batches_tracked"


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def _looks_like_torch_file(path: Path) -> bool:
    """Zip container (torch >= 1.6) or a pickle stream (the legacy format) by its first bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The generator state dict stored in ``path``, keys normalised (no ``module.`` prefix)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"Wav2Lip weights not found at {p}; pass the path of your wav2lip.pth or "
                         "wav2lip_gan.pth with --weights.")
    if p.stat().st_size == 0:
        raise ModelError(f"{p.name} is empty; download or copy your Wav2Lip checkpoint again.")
    try:
        # weights_only: a checkpoint is data, never code to run.
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (RuntimeError, EOFError, IndexError, UnpicklingError...)
        if not _looks_like_torch_file(p):
            raise ModelError(f"{p.name} is not a PyTorch checkpoint; pass a Wav2Lip .pth file.") from e
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise ModelError(f"{p.name} holds objects other than weights, so it is not loaded for safety; "
                             "pass the original Wav2Lip checkpoint.") from e
        log.debug("torch.load(%s) failed", p, exc_info=True)
        raise ModelError(f"{p.name} is truncated or corrupt ({_reason(e)}); download or copy it again.") from e

    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(sd, Mapping) or not sd:
        raise ModelError(f"{p.name} holds no state dict; pass a Wav2Lip generator checkpoint.")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(f"{p.name} is not a Wav2Lip generator checkpoint (entry {key!r} is not a tensor).")
        out[key.removeprefix(_PREFIX)] = value
    return out


def check_state_dict(sd: Mapping[str, torch.Tensor], model: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    """``sd`` completed for strict loading into ``model``, or a ModelError naming the first problem."""
    expected = model.state_dict()
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        raise ModelError(f"{name} holds another network's weights, not the Wav2Lip generator "
                         f"(unexpected key '{unexpected[0]}', {len(unexpected)} in all); "
                         "pass wav2lip.pth or wav2lip_gan.pth.")
    missing = [k for k in expected if k not in sd and not k.endswith(_BN_COUNTER)]
    if missing:
        raise ModelError(f"{name} is incomplete: the Wav2Lip weight '{missing[0]}' is missing "
                         f"({len(missing)} in all); pass the full generator checkpoint.")
    for key, ref in expected.items():
        if key in sd and sd[key].shape != ref.shape:
            raise ModelError(f"{name} has the wrong shapes for Wav2Lip: '{key}' is {_shape(sd[key])}, "
                             f"expected {_shape(ref)}; pass a checkpoint of the published generator.")
    full = dict(sd)
    for key, ref in expected.items():
        full.setdefault(key, ref)  # only num_batches_tracked can be absent here; eval mode ignores it
    return full


def load_wav2lip(path: str | os.PathLike, device: torch.device | str = "cpu") -> Wav2Lip:
    """The Wav2Lip generator with the weights in ``path``, in eval mode on ``device``."""
    p = Path(path)
    model = Wav2Lip()
    sd = check_state_dict(read_state_dict(p), model, p.name)
    for key, t in sd.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ModelError(f"{p.name} is corrupt: weight '{key}' holds NaN or infinite values.")
    model.load_state_dict(sd, strict=True)
    log.info("Loaded Wav2Lip weights from %s", p)
    return model.eval().to(device)


def _reason(e: BaseException) -> str:
    """The first sentence of a loader error, on one line (torch's messages run on for paragraphs)."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = text.split(". ")[0].rstrip(".")
    return text[:120] + ("..." if len(text) > 120 else "")
