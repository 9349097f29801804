"""The generator computes the published function: deterministic weights reproduce the reference output."""

from __future__ import annotations

import numpy as np
import torch
from wav2lip_helpers import (
    WAV2LIP_DIR,
    checkpoint_keys,
    deterministic_inputs,
    deterministic_state_dict,
    needs_shared,
)

from lipdub.render.wav2lip.model import Wav2Lip

pytestmark = needs_shared


def test_state_dict_names_and_shapes_match_released_checkpoints() -> None:
    sd = Wav2Lip().state_dict()
    expected = checkpoint_keys()
    assert list(sd) == [name for name, _, _ in expected]
    for name, shape, dtype in expected:
        assert tuple(sd[name].shape) == shape, name
        assert str(sd[name].dtype).removeprefix("torch.") == dtype, name
    assert sum(p.numel() for p in Wav2Lip().parameters()) == 36_298_035


def test_deterministic_weights_reproduce_reference_output() -> None:
    model = Wav2Lip().eval()
    model.load_state_dict(deterministic_state_dict(), strict=True)
    mel, face = deterministic_inputs()
    with torch.no_grad():
        out = model(mel, face).numpy()
    ref = np.load(WAV2LIP_DIR / "reference_output.npz")["output"]
    assert out.shape == ref.shape == (2, 3, 96, 96)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
