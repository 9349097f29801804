"""The mel front end matches the features Wav2Lip was trained with."""

from __future__ import annotations

import numpy as np
from wav2lip_helpers import WAV2LIP_DIR, needs_shared

from lipdub.render.wav2lip.mel import mel_windows, melspectrogram


@needs_shared
def test_mel_matches_reference() -> None:
    ref = np.load(WAV2LIP_DIR / "reference_mel.npz")
    mel = melspectrogram(ref["waveform"])
    assert mel.shape == ref["mel"].shape == (80, 161)
    np.testing.assert_allclose(mel, ref["mel"], atol=1e-3, rtol=0)


def test_mel_windows_follow_the_frame_clock() -> None:
    mel = np.arange(80 * 200, dtype=np.float32).reshape(80, 200)
    w25 = mel_windows(mel, 10, 25.0)
    assert w25.shape == (10, 1, 80, 16)
    for j in range(10):  # int(80*j/25), the training recipe
        np.testing.assert_array_equal(w25[j, 0], mel[:, int(80 * j / 25):int(80 * j / 25) + 16])
    w30 = mel_windows(mel, 3, 30.0)
    np.testing.assert_array_equal(w30[2, 0], mel[:, 5:21])  # int(80*2/30) = 5
    # Past the end: the last full window, never a short one.
    tail = mel_windows(mel, 100, 25.0)
    np.testing.assert_array_equal(tail[-1, 0], mel[:, -16:])


def test_mel_handles_short_and_silent_input() -> None:
    assert melspectrogram(np.zeros(0, np.float32)).shape[0] == 80
    short = melspectrogram(np.zeros(100, np.float32))
    assert short.shape == (80, 1) and np.all(short == -4)
    assert mel_windows(short, 2, 25.0).shape == (2, 1, 80, 16)
