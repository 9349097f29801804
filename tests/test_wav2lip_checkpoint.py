"""Loading user checkpoints: the released format round-trips, and each broken file gets its own message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from wav2lip_helpers import (
    WAV2LIP_DIR,
    deterministic_inputs,
    deterministic_state_dict,
    needs_shared,
    save_released_checkpoint,
)

from lipdub.errors import ModelError
from lipdub.render.wav2lip.checkpoint import check_state_dict, load_wav2lip
from lipdub.render.wav2lip.model import Wav2Lip


class NotWeights:
    """A picklable object that a weights-only load must refuse."""


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """Deterministic weights saved as the released checkpoints are: DataParallel names, no BN counters."""
    return save_released_checkpoint(tmp_path_factory.mktemp("w2l") / "wav2lip_gan.pth")


def _message(path: Path) -> str:
    with pytest.raises(ModelError) as info:
        load_wav2lip(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@needs_shared
def test_released_format_round_trip(released: Path) -> None:
    model = load_wav2lip(released)
    assert not model.training
    mel, face = deterministic_inputs()
    with torch.no_grad():
        out = model(mel, face).numpy()
    ref = np.load(WAV2LIP_DIR / "reference_output.npz")["output"]
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


@needs_shared
def test_bare_state_dict_loads(tmp_path: Path) -> None:
    path = tmp_path / "bare.pth"
    torch.save(deterministic_state_dict(), path)
    model = load_wav2lip(path)
    assert torch.equal(model.output_block[1].bias, deterministic_state_dict()["output_block.1.bias"])


def test_missing_file(tmp_path: Path) -> None:
    msg = _message(tmp_path / "wav2lip.pth")
    assert "not found" in msg and "--weights" in msg
    assert "not found" in _message(tmp_path)  # a folder is not a checkpoint either


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "w.pth").write_bytes(b"")
    assert "is empty" in _message(tmp_path / "w.pth")


@needs_shared
def test_truncated_file(released: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pth"
    with open(released, "rb") as f:
        cut.write_bytes(f.read(10_000_000))
    assert "truncated or corrupt" in _message(cut)


def test_truncated_legacy_file(tmp_path: Path) -> None:
    full = tmp_path / "legacy.pth"
    torch.save({"state_dict": {"a": torch.zeros(100)}}, full, _use_new_zipfile_serialization=False)
    data = full.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _message(tmp_path / "cut.pth")


def test_not_a_torch_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(200))
    assert "not a PyTorch checkpoint" in _message(tmp_path / "model.onnx")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "extra": NotWeights()}, tmp_path / "obj.pth")
    assert "objects other than weights" in _message(tmp_path / "obj.pth")


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    assert "no state dict" in _message(tmp_path / "list.pth")


def test_another_networks_weights(tmp_path: Path) -> None:
    # Shaped like the SyncNet expert / a ResNet: none of the generator's names.
    other = {"module.face_encoder.0.conv_block.0.weight": torch.zeros(32, 15, 7, 7),
             "module.fc.weight": torch.zeros(10, 512)}
    torch.save({"state_dict": other, "global_step": 1}, tmp_path / "lipsync_expert.pth")
    msg = _message(tmp_path / "lipsync_expert.pth")
    assert "another network's weights" in msg and "'face_encoder.0.conv_block.0.weight'" in msg


def test_incomplete_state_dict(tmp_path: Path) -> None:
    sd = {k: v for k, v in Wav2Lip().state_dict().items() if not k.startswith("output_block")}
    torch.save({"state_dict": sd}, tmp_path / "partial.pth")
    msg = _message(tmp_path / "partial.pth")
    assert "incomplete" in msg and "'output_block.0.conv_block.0.weight'" in msg


def test_wrong_shapes(tmp_path: Path) -> None:
    # Every name right, every shape wrong: a tiny file that fails on the first key.
    sd = {k: torch.zeros(1) for k in Wav2Lip().state_dict()}
    torch.save({"state_dict": sd}, tmp_path / "shapes.pth")
    msg = _message(tmp_path / "shapes.pth")
    assert "wrong shapes" in msg and "'face_encoder_blocks.0.0.conv_block.0.weight' is 1, expected 16x6x7x7" in msg


def test_wrong_shape_in_an_otherwise_good_state_dict() -> None:
    model = Wav2Lip()
    sd = model.state_dict()
    sd["audio_encoder.3.conv_block.0.weight"] = torch.zeros(64, 32, 5, 5)
    with pytest.raises(ModelError, match=r"'audio_encoder.3.conv_block.0.weight' is 64x32x5x5, expected 64x32x3x3"):
        check_state_dict(sd, model, "w.pth")


def test_non_finite_weights(tmp_path: Path) -> None:
    sd = Wav2Lip().state_dict()
    sd["output_block.1.bias"] = torch.tensor([0.0, float("nan"), 0.0])
    torch.save(sd, tmp_path / "nan.pth")
    assert "NaN" in _message(tmp_path / "nan.pth")
