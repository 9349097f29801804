"""Language-independent acoustic features on a 10 ms hop: loudness, band energies, LPC formants,
voicing and closure/burst cues. Everything is vectorised over frames so 30 minutes stay fast."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOP_S = 0.010  # shared by every stage: VAD, phones (pocketsphinx uses 100 frames/s) and features
WIN_S = 0.025
# Band edges in Hz: voice bar, F1 region, F2 region, fricative/burst region.
BANDS = ((80.0, 300.0), (300.0, 1000.0), (1000.0, 3000.0), (3000.0, 7600.0))
# Log-mel bands for the learned mouth model (lipdub.audio.mouth_model), from the spectrum computed anyway.
N_MELS = 26
MEL_RANGE = (80.0, 7600.0)


@dataclass
class Features:
    """Per-hop acoustic measurements (hop = ``HOP_S``); frame i is centred at ``i * HOP_S``."""

    rms_db: np.ndarray  # overall level, dBFS
    bands_db: np.ndarray  # (n, len(BANDS)) band energies, dB
    f1: np.ndarray  # first formant, Hz (NaN where unvoiced or silent)
    f2: np.ndarray  # second formant, Hz (NaN where unvoiced or silent)
    voicing: np.ndarray  # 0..1 normalised autocorrelation peak in the pitch range
    burst: np.ndarray  # 0..1 positive spectral flux in the high band (plosive releases)
    mel_db: np.ndarray  # (n, N_MELS) log-mel energies, dB

    def __len__(self) -> int:
        return len(self.rms_db)

    @classmethod
    def concat(cls, parts: list[Features]) -> Features:
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in FIELDS))

    def rows(self, index: slice | np.ndarray) -> Features:
        """The same measurements for a subset of hops (a slice or an index array)."""
        return Features(*(getattr(self, k)[index] for k in FIELDS))


FIELDS = ("rms_db", "bands_db", "f1", "f2", "voicing", "burst", "mel_db")


def _frames(x: np.ndarray, sr: int, n: int) -> np.ndarray:
    """(n, win) frames centred on i*hop, zero-padded at the ends."""
    hop, win = round(HOP_S * sr), round(WIN_S * sr)
    pad = win // 2
    xp = np.concatenate([np.zeros(pad, np.float32), x, np.zeros(win + hop, np.float32)])
    idx = np.arange(n)[:, None] * hop + np.arange(win)[None, :]
    return xp[idx]


def mel_filterbank(sr: int, nfft: int, n_mels: int = N_MELS, fmin: float = MEL_RANGE[0],
                   fmax: float = MEL_RANGE[1]) -> np.ndarray:
    """(n_mels, nfft // 2 + 1) triangular filters equally spaced on the mel scale (HTK formula)."""
    def mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    fmax = min(fmax, sr / 2)
    edges_hz = 700.0 * (10 ** (np.linspace(mel(fmin), mel(fmax), n_mels + 2) / 2595.0) - 1.0)
    freqs = np.fft.rfftfreq(nfft, 1.0 / sr)
    lo, mid, hi = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rise = (freqs[None, :] - lo) / (mid - lo)
    fall = (hi - freqs[None, :]) / (hi - mid)
    return np.clip(np.minimum(rise, fall), 0.0, None).astype(np.float32)


def n_hops(n_samples: int, sr: int) -> int:
    return int(np.ceil(n_samples / round(HOP_S * sr)))


def _levinson(r: np.ndarray, order: int) -> np.ndarray:
    """Batched Levinson-Durbin: autocorrelations (n, order+1) -> LPC polynomials (n, order+1)."""
    n = r.shape[0]
    a = np.zeros((n, order + 1))
    a[:, 0] = 1.0
    err = r[:, 0].copy()
    for i in range(1, order + 1):
        acc = r[:, i] + np.einsum("nj,nj->n", a[:, 1:i], r[:, i - 1:0:-1]) if i > 1 else r[:, i].copy()
        k = -acc / np.maximum(err, 1e-12)
        a_prev = a.copy()
        a[:, 1:i] = a_prev[:, 1:i] + k[:, None] * a_prev[:, i - 1:0:-1]
        a[:, i] = k
        err = err * (1.0 - k * k)
    return a


def _formants(frames: np.ndarray, sr: int, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1/F2 from the roots of an order-10 LPC fitted at 10 kHz (the classic Praat/Markel recipe)."""
    n = len(frames)
    f1 = np.full(n, np.nan)
    f2 = np.full(n, np.nan)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return f1, f2
    fr = frames[idx].astype(np.float64)
    # Decimate 16k -> 8k-ish band by low-passing through a short FIR, then LPC on every 2nd sample at 8k;
    # formants above 4 kHz do not matter for F1/F2.
    step = max(1, sr // 8000)
    fs = sr / step
    if step > 1:
        kernel = np.hanning(2 * step + 1)
        kernel /= kernel.sum()
        fr = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), 1, fr)[:, ::step]
    fr = np.concatenate([fr[:, :1], fr[:, 1:] - 0.63 * fr[:, :-1]], axis=1)  # pre-emphasis from 50 Hz (Praat default)
    fr *= np.hamming(fr.shape[1])[None, :]
    order = 8
    spec = np.fft.rfft(fr, 2 * fr.shape[1], axis=1)
    r = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, : order + 1]
    r[:, 0] *= 1.0 + 1e-6
    a = _levinson(r, order)
    # Companion matrices -> all roots at once.
    comp = np.zeros((len(a), order, order))
    comp[:, 0, :] = -a[:, 1:]
    comp[:, np.arange(1, order), np.arange(order - 1)] = 1.0
    roots = np.linalg.eigvals(comp)
    freq = np.angle(roots) * fs / (2 * np.pi)
    bw = -np.log(np.maximum(np.abs(roots), 1e-9)) * fs / np.pi
    good = (freq > 200.0) & (freq < fs / 2 - 100.0) & (bw < 600.0)
    freq = np.where(good, freq, np.inf)
    freq.sort(axis=1)
    g1, g2 = freq[:, 0], freq[:, 1]
    f1[idx] = np.where(np.isfinite(g1), g1, np.nan)
    f2[idx] = np.where(np.isfinite(g2), g2, np.nan)
    return f1, f2


def compute_features(x: np.ndarray, sr: int) -> Features:
    """Features for a whole (chunk of) signal; callers chunk long audio with ``WIN_S`` of context."""
    n = n_hops(len(x), sr)
    frames = _frames(x.astype(np.float32), sr, n)
    win = frames.shape[1]
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    rms_db = 20 * np.log10(rms + 1e-7)
    nfft = 1 << int(np.ceil(np.log2(win)))
    spec = np.abs(np.fft.rfft(frames * np.hanning(win)[None, :].astype(np.float32), nfft, axis=1)) ** 2
    freqs = np.fft.rfftfreq(nfft, 1.0 / sr)
    bands = []
    for lo, hi in BANDS:
        sel = (freqs >= lo) & (freqs < min(hi, sr / 2))
        e = spec[:, sel].sum(axis=1) if sel.any() else np.zeros(n)
        bands.append(10 * np.log10(e + 1e-10))
    bands_db = np.stack(bands, axis=1)
    # Voicing: peak of the normalised autocorrelation at 60-400 Hz lags.
    # Dividing by the window's own autocorrelation undoes the taper's bias against long lags (Boersma 1993).
    ac = np.fft.irfft(spec, axis=1)
    wac = np.fft.irfft(np.abs(np.fft.rfft(np.hanning(win), nfft)) ** 2)
    lo_lag, hi_lag = int(sr / 400), min(int(sr / 70), win // 2)
    norm = ac[:, lo_lag:hi_lag] / np.maximum(ac[:, :1], 1e-12) / (wac[lo_lag:hi_lag] / wac[0])[None, :]
    voicing = np.clip(norm.max(axis=1), 0.0, 1.0)
    # Bursts: rise of high-band energy over 20 ms.
    hi = bands_db[:, 3]
    rise = hi - np.concatenate([np.full(2, hi[0]), hi[:-2]])
    burst = np.clip(rise / 20.0, 0.0, 1.0)
    ok = (rms_db > -55.0) & (voicing > 0.35)
    f1, f2 = _formants(frames, sr, ok)
    mel_db = 10 * np.log10(spec @ mel_filterbank(sr, nfft).T + 1e-10)
    return Features(rms_db.astype(np.float32), bands_db.astype(np.float32), f1.astype(np.float32),
                    f2.astype(np.float32), voicing.astype(np.float32), burst.astype(np.float32),
                    mel_db.astype(np.float32))
