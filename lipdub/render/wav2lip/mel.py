"""Wav2Lip's audio front end: the log-mel spectrogram it was trained on, in numpy/scipy.

Recipe (../shared/wav2lip/README.md): pre-emphasis 0.97; centred STFT (n_fft 800, hop 200, periodic
Hann 800, reflect padding); magnitude; Slaney mel bank (80 bands, 55-7600 Hz, Slaney area norm);
``20*log10(max(1e-5, .)) - 20`` dB; then normalised and clipped to [-4, 4].
At 16 kHz one mel column is 12.5 ms, i.e. 80 columns per second.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.signal import get_window, lfilter

SAMPLE_RATE = 16_000
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS = 4.0
MEL_STEP = 16  # columns per video frame window
MEL_PER_SECOND = SAMPLE_RATE / HOP  # 80


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """(80, n_fft//2+1) triangular filters, each normalised to unit area (Slaney)."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


def _stft_magnitude(y: np.ndarray) -> np.ndarray:
    """|STFT| as (n_fft//2+1, frames), centred with reflect padding."""
    pad = N_FFT // 2
    mode = "reflect" if len(y) > pad else "constant"  # reflect needs more samples than the pad
    y = np.pad(y, pad, mode=mode)
    n_frames = 1 + (len(y) - N_FFT) // HOP
    window = get_window("hann", WIN, fftbins=True)
    frames = np.lib.stride_tricks.as_strided(
        y, shape=(n_frames, N_FFT), strides=(y.strides[0] * HOP, y.strides[0]), writeable=False)
    return np.abs(np.fft.rfft(frames * window, axis=1)).T


def melspectrogram(samples: np.ndarray) -> np.ndarray:
    """(80, 1 + len//200) float32 features in [-4, 4] for 16 kHz mono ``samples``."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if len(x) == 0:
        return np.full((N_MELS, 1), -MAX_ABS, np.float32)
    y = lfilter([1.0, -PREEMPHASIS], [1.0], x)
    mel = mel_basis().astype(np.float64) @ _stft_magnitude(y)
    s = 20 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    s = 2 * MAX_ABS * (s - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS
    return np.clip(s, -MAX_ABS, MAX_ABS).astype(np.float32)


def mel_windows(mel: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """(n_frames, 1, 80, 16) mel windows, one per video frame.

    Frame ``j`` starts at column ``int(80 * j / fps)`` (the training recipe's ``int(80*j/25)``,
    generalised to any frame rate); windows running past the end repeat the last columns, as the
    published inference does, so every frame gets a full window.
    """
    n_cols = mel.shape[1]
    out = np.empty((n_frames, 1, N_MELS, MEL_STEP), np.float32)
    padded = mel if n_cols >= MEL_STEP else np.pad(mel, ((0, 0), (0, MEL_STEP - n_cols)), mode="edge")
    last_start = padded.shape[1] - MEL_STEP
    for j in range(n_frames):
        start = min(int(MEL_PER_SECOND * j / fps), last_start)
        out[j, 0] = padded[:, start:start + MEL_STEP]
    return out
