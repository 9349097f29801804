"""Fusion: speech -> MouthTrack. Streams the audio in chunks cut at quiet points (with window context
for the features), keeps only small per-10-ms arrays for the whole file, then fuses phones and
acoustics and samples the result at the video frame rate."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from scipy.ndimage import gaussian_filter1d

from lipdub.audio import phones as ph
from lipdub.audio import vad
from lipdub.audio.features import HOP_S, Features, compute_features
from lipdub.audio.mouth_model import bundled, hop_inputs, predict_frames
from lipdub.audio.timing import (
    ANTICIPATION_S,
    closure_mask,
    mean_targets,
    phone_targets,
    smooth_keep_closures,
)
from lipdub.audio.track import MouthTrack
from lipdub.media.audio import AudioClip

log = logging.getLogger(__name__)

RATE = 16_000
CHUNK_S = 30.0  # audio processed at once; bounds memory whatever the length
CUT_SEARCH_S = 5.0  # look this far back from a chunk's end for the quietest hop to cut at
CONTEXT_S = 0.1  # extra audio either side of a chunk so analysis windows at its edges are whole
ONSET_LEAD_S = 0.25  # lips part and the jaw drops 150-300 ms before phonation (pre-speech inhalation and
# posturing for the first segment); the scorer and held-out halves improve steadily from 0.10 to 0.30 s
SMOOTH_S = 0.04  # the jaw's own inertia: real openness has little energy above ~4 Hz
PHONE_WEIGHT = 0.5  # share of the phone track in the openness at full confidence
LABIO_DEPTH = 0.5  # how far an f/v pulls the opening down (allphone confuses f/v with th, so not fully)
APERTURE_SHARE = 0.6  # lip-radiation (high band) vs jaw-height (F1) cue in the acoustic openness
REST_AFTER_S = 0.3  # the learned opening is let go to rest only this far from any speech: leave-one-speaker-out
# r is the same from 0.3 s up (0.005 lower at 0.2 s, 0.02 at 0.1 s), and real mouths rarely close in shorter gaps
QUIET_CLOSING = 0.25  # share of the opening lost at the quietest hops of speech: on the eval suite, 0.25
# to 0.7 trade self-clip accuracy for contrast between speech and its pauses; 0.25 costs under 0.01 of r


@dataclass
class Analysis:
    """Everything measured on the 10 ms hop grid; kept for plotting and tests."""

    features: Features
    vad_raw: np.ndarray
    speech: np.ndarray
    phones: list[ph.Phone]
    aligned: bool
    confidence: float
    alternatives: list[list[ph.Phone]] = field(default_factory=list)  # further allphone decodes
    open_phone: np.ndarray = field(default_factory=lambda: np.zeros(0))
    open_acoustic: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    if sr == RATE:
        return x.astype(np.float32, copy=False)
    # Imported here: scipy.signal takes 0.6 s to import, and 16 kHz input never needs it.
    from scipy.signal import resample_poly

    f = Fraction(RATE, sr).limit_denominator(1000)
    return resample_poly(x.astype(np.float32), f.numerator, f.denominator).astype(np.float32)


def _cut_points(x: np.ndarray, sr: int) -> list[int]:
    """Chunk boundaries in hops, each at the quietest hop of the last CUT_SEARCH_S before CHUNK_S."""
    total = int(math.ceil(len(x) / (sr * HOP_S)))
    hops_chunk, hops_search = int(CHUNK_S / HOP_S), int(CUT_SEARCH_S / HOP_S)
    cuts, start = [0], 0
    while total - start > hops_chunk:
        lo, hi = start + hops_chunk - hops_search, start + hops_chunk
        seg = x[int(lo * sr * HOP_S): int(hi * sr * HOP_S)]
        hop = int(round(sr * HOP_S))
        e = (seg[: len(seg) // hop * hop].reshape(-1, hop) ** 2).mean(axis=1)
        # Smooth a little so the cut lands in a pause, not between two periods of a vowel.
        start = lo + int(np.argmin(np.convolve(e, np.ones(5), mode="same")))
        cuts.append(start)
    cuts.append(total)
    return cuts


def _measure(clip: AudioClip, text: str | None) -> Analysis:
    x, sr = clip.samples, clip.sample_rate
    cuts = _cut_points(x, sr)
    total = cuts[-1]
    feats, flags, phones = [], [], []
    alts: list[list[ph.Phone]] = [[] for _ in ph.ALLPHONE_LWS[1:]]
    use_text = bool(text and text.strip())
    if use_text and clip.duration > ph.MAX_ALIGN_S:
        log.warning("The transcript is ignored for audio longer than %.0f s; recognising phones instead.",
                    ph.MAX_ALIGN_S)
        use_text = False
    with ph.Recogniser(0.0 if use_text else clip.duration, (len(cuts) - 1) * len(ph.ALLPHONE_LWS)) as decodes:
        for h0, h1 in zip(cuts[:-1], cuts[1:], strict=True):
            s0, s1 = int(round(h0 * HOP_S * sr)), int(round(h1 * HOP_S * sr))
            c0 = max(0, s0 - int(CONTEXT_S * sr))
            y = _to_16k(x[c0: min(len(x), s1 + int(CONTEXT_S * sr))], sr)
            lead = int(round((s0 - c0) * RATE / sr))
            n = h1 - h0
            core = y[lead: lead + n * int(RATE * HOP_S)]
            # Features over context, then trimmed to this chunk's hops.
            f = compute_features(y, RATE)
            first = lead // int(RATE * HOP_S)
            feats.append(f.rows(slice(first, first + n)))
            fl = vad.webrtc_flags(core, RATE)
            flags.append(np.pad(fl, (0, max(0, n - len(fl))))[:n])
            if not use_text:
                for lw in ph.ALLPHONE_LWS:
                    decodes.submit(core, RATE, h0 * HOP_S, lw)
            del y, core, f
        if not use_text:
            phones, alts = _by_weight(decodes.results())
    F = Features.concat(feats)
    pad = total - len(F)
    if pad > 0:  # a short last chunk can come out one hop short
        F = F.rows(np.concatenate([np.arange(len(F)), np.full(pad, len(F) - 1)]))
    raw = np.concatenate(flags)[:total]
    aligned = False
    if use_text:
        aligned_phones = ph.align(_to_16k(x, sr), RATE, text or "")
        if aligned_phones:
            phones, aligned = aligned_phones, True
        else:
            log.warning("The transcript does not match the audio; recognising phones instead.")
            with ph.Recogniser(clip.duration, (len(cuts) - 1) * len(ph.ALLPHONE_LWS)) as decodes:
                for h0, h1 in zip(cuts[:-1], cuts[1:], strict=True):
                    s0, s1 = int(round(h0 * HOP_S * sr)), int(round(h1 * HOP_S * sr))
                    y = _to_16k(x[s0:s1], sr)
                    for lw in ph.ALLPHONE_LWS:
                        decodes.submit(y, RATE, h0 * HOP_S, lw)
                phones, alts = _by_weight(decodes.results())
    live = F.rms_db[F.rms_db > -100.0]
    floor_db = float(np.percentile(live, 5)) if len(live) else -120.0
    peak_db = float(np.percentile(live, 98)) if len(live) else -120.0
    speech = vad.speech_mask(raw, F.rms_db, floor_db, peak_db)
    return Analysis(F, raw, speech, phones, aligned, 0.0, [] if aligned else alts)


def _by_weight(decodes: list[list[ph.Phone]]) -> tuple[list[ph.Phone], list[list[ph.Phone]]]:
    """Chunk-by-chunk decodes (each chunk's in ``ALLPHONE_LWS`` order) as the first weight's phones
    and one list per further weight, each over the whole recording."""
    n = len(ph.ALLPHONE_LWS)
    per_weight = [[p for seq in decodes[i::n] for p in seq] for i in range(n)]
    return per_weight[0], per_weight[1:]


def _norm(v: np.ndarray, mask: np.ndarray, lo_p: float = 5, hi_p: float = 95) -> np.ndarray:
    """Scale to 0..1 by percentiles over speech hops (robust to level, mic and language)."""
    ref = v[mask] if mask.any() else v
    lo, hi = np.percentile(ref, lo_p), np.percentile(ref, hi_p)
    return np.clip((v - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def quiet_level(rms_db: np.ndarray, speech: np.ndarray) -> np.ndarray:
    """0 at or above this recording's 30th-percentile speech level, 1 at or below its 5th percentile."""
    if not speech.any():
        return np.zeros(len(rms_db))
    lvl = rms_db[speech]
    q05, q30 = float(np.percentile(lvl, 5)), float(np.percentile(lvl, 30))
    return np.clip((q30 - rms_db) / max(q30 - q05, 1e-3), 0.0, 1.0)


def acoustic_open(F: Features, speech: np.ndarray) -> np.ndarray:
    """Openness from acoustics alone, for any language, as the sum of two physically separate cues.
    Lip aperture: the lips act as a low-pass radiator, so the wider they are the more energy escapes
    above 3 kHz, while rounding and closing cut it (Stevens, Acoustic Phonetics ch. 3). Jaw height: F1
    rises almost linearly with jaw opening (Lindblom & Sundberg 1971). Each cue is normalised by
    percentiles over this recording's speech, so level, microphone, voice and language drop out; they
    are added rather than multiplied so that one failing cue (F1 lost in noise, a muffled high band)
    only halves the contrast instead of flattening it."""
    hi = _norm(F.bands_db[:, 3], speech, 10, 97)
    f1 = np.asarray(F.f1, np.float64)
    ok = np.isfinite(f1[speech]).any() if speech.any() else False
    # Unvoiced and silent hops have no F1: they take the speech median, i.e. no jaw cue either way.
    f1 = np.nan_to_num(f1, nan=float(np.nanmedian(f1[speech])) if ok else 500.0)
    f1n = _norm(f1, speech, 10, 97) if ok else np.zeros_like(f1)
    # ...except near-silent hops inside speech (pauses, stop closures): the jaw rises towards rest there.
    if ok:
        f1n = np.where(np.isfinite(np.asarray(F.f1)), f1n, f1n * (1.0 - quiet_level(F.rms_db, speech)))
    return APERTURE_SHARE * hi + (1.0 - APERTURE_SHARE) * f1n


def _confidence(open_phone: np.ndarray, open_ac: np.ndarray, speech: np.ndarray, aligned: bool) -> float:
    """How much to trust the phone track. English allphone on unknown speech starts from a prior of 0.5,
    nudged by how well its openness agrees with the acoustic openness (short clips make the agreement
    noisy, so it only moves the prior a little); a forced alignment is trusted most."""
    if aligned:
        return 0.9
    if speech.sum() < 20:
        return 0.5
    a, b = open_phone[speech], open_ac[speech]
    if a.std() < 1e-6 or b.std() < 1e-6:
        return 0.3
    r = float(np.corrcoef(a, b)[0, 1])
    return float(np.clip(0.5 + 0.25 * r, 0.35, 0.7))


def _to_frames(v: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """Average the hops falling inside each video frame's interval [i/fps, (i+1)/fps)."""
    t = (np.arange(len(v)) + 0.5) * HOP_S
    idx = np.floor(t * fps).astype(np.int64)
    keep = idx < n_frames
    s = np.bincount(idx[keep], v[keep].astype(np.float64), n_frames)
    c = np.bincount(idx[keep], minlength=n_frames)
    # Frames with no hop (fps > 100) take the nearest hop.
    near = np.clip(np.round((np.arange(n_frames) + 0.5) / fps / HOP_S - 0.5).astype(int), 0, max(len(v) - 1, 0))
    fallback = v[near] if len(v) else np.zeros(n_frames)
    return np.where(c > 0, s / np.maximum(c, 1), fallback)


def analyse_detailed(clip: AudioClip, text: str | None = None) -> tuple[Analysis, dict[str, np.ndarray]]:
    """Per-hop analysis and per-hop mouth curves (open, width, round, closed, speech)."""
    A = _measure(clip, text)
    n = len(A.features)
    T = mean_targets([phone_targets(p, n) for p in [A.phones, *A.alternatives]])
    speech = A.speech.astype(bool)
    oa = acoustic_open(A.features, speech)
    # Acoustic openness leads like the phones do: the jaw opens before the sound.
    shift = int(round(ANTICIPATION_S / HOP_S))
    oa_lead = np.concatenate([oa[shift:], np.repeat(oa[-1:], min(shift, len(oa)))])[:n] if n else oa
    A.open_phone, A.open_acoustic = T.open, oa_lead
    conf = _confidence(T.open, oa_lead, speech, A.aligned)
    A.confidence = conf
    # Phone shapes and acoustics blend by the phone track's confidence; allphone on a language it does
    # not know gets little say, a forced alignment a lot.
    w = PHONE_WEIGHT * conf
    open_ = gaussian_filter1d(w * T.open + (1 - w) * oa_lead, SMOOTH_S / HOP_S, mode="nearest") if n > 1 else T.open
    # Speech activity, led by the pre-speech opening and eased so pauses close naturally.
    lead = int(round(ONSET_LEAD_S / HOP_S))
    ahead = np.concatenate([speech[lead:], np.zeros(min(lead, n), bool)])[:n] if n else speech
    act = speech | ahead
    gate = gaussian_filter1d(act.astype(float), 0.06 / HOP_S, mode="nearest") if n > 1 else act.astype(float)
    gate[gate < 0.02] = 0.0  # no residual quiver far from speech
    closed = closure_mask(T.closed) * (gate > 0.5)
    # Quiet stretches inside speech (stop closures, short pauses) raise the jaw a little, led like
    # everything else by the anticipation.
    quiet = quiet_level(A.features.rms_db, speech)
    if n > 1:
        shift_q = int(round(ANTICIPATION_S / HOP_S))
        quiet = gaussian_filter1d(quiet, 0.04 / HOP_S, mode="nearest")
        quiet = np.concatenate([quiet[shift_q:], np.repeat(quiet[-1:], min(shift_q, n))])[:n]
    open_ = open_ * (1.0 - QUIET_CLOSING * quiet)
    open_ = smooth_keep_closures(open_ * gate, closed, sigma_s=0.0)
    # f/v: the lower lip rises to the upper teeth, so the inner-lip gap almost vanishes; eased over
    # ~20 ms either side like any lip gesture, and not a closure (the lips do not meet).
    if n > 1 and T.labio.any():
        open_ *= 1.0 - LABIO_DEPTH * np.clip(1.5 * gaussian_filter1d(T.labio, 0.02 / HOP_S), 0.0, 1.0)
    width = smooth_keep_closures(T.width * gate, np.zeros(n)) if n else T.width
    rnd = smooth_keep_closures(T.round * gate, np.zeros(n)) if n else T.round
    # Far from any speech the mouth rests whatever a model says; inside and near speech the learned
    # opening is left alone (held-out speakers lose 0.05 of r when every unvoiced gap is gated).
    reach = int(round(REST_AFTER_S / HOP_S))
    near = np.convolve(act.astype(float), np.ones(2 * reach + 1), mode="same") > 0 if n else act
    rest_gate = gaussian_filter1d(near.astype(float), 0.08 / HOP_S, mode="nearest") if n > 1 else near.astype(float)
    curves = {"open": np.clip(open_, 0, 1), "width": np.clip(width, -1, 1), "round": np.clip(rnd, 0, 1),
              "closed": closed, "speech": act.astype(float), "near_speech": rest_gate}
    return A, curves


def analyse(clip: AudioClip, fps: float, n_frames: int | None = None, text: str | None = None) -> MouthTrack:
    """Per-frame mouth targets for ``clip`` at ``fps``; ``text`` (English) enables forced alignment."""
    if fps <= 0:
        raise ValueError("fps must be positive")
    if n_frames is None:
        n_frames = int(math.ceil(clip.duration * fps - 1e-9))
    if len(clip.samples) == 0 or n_frames == 0:
        return MouthTrack.silent(n_frames, fps)
    A, cv = analyse_detailed(clip, text)
    return mouth_track(A, cv, fps, n_frames)


def mouth_track(A: Analysis, cv: dict[str, np.ndarray], fps: float, n_frames: int) -> MouthTrack:
    """The MouthTrack every renderer gets: opening and width from the learned mouth model
    (:mod:`lipdub.audio.mouth_model`), which reads the measurements and the curves of the fusion;
    rounding, closures and speech from the fusion itself."""
    track = track_from_curves(cv, fps, n_frames)
    learned = predict_frames(bundled(), hop_inputs(A.features, cv, A.speech), fps, n_frames)
    rest = _to_frames(cv["near_speech"], fps, n_frames)
    opening = np.clip(learned["open"], 0, 1) * rest
    if A.aligned:
        # A forced alignment places p/b/m closures to the hop: they close the lips.
        opening = opening * (1.0 - track.closed)
    else:
        # Allphone's guessed closures do not earn it: leave-one-speaker-out r drops from 0.621 to 0.607
        # when they close the lips, and the model has already seen them among its inputs.
        track.closed = np.zeros_like(track.closed)
    track.open = opening.astype(np.float32)
    track.width = (np.clip(learned["width"], -1, 1) * rest).astype(np.float32)
    track.embedding = learned["embedding"]
    return track


def track_from_curves(cv: dict[str, np.ndarray], fps: float, n_frames: int) -> MouthTrack:
    """Sample the fusion's per-hop curves at the video frame rate."""
    fr = {k: _to_frames(v, fps, n_frames) for k, v in cv.items() if k in ("open", "width", "round", "closed",
                                                                         "speech")}
    return MouthTrack(float(fps), fr["open"].astype(np.float32), fr["width"].astype(np.float32),
                      fr["round"].astype(np.float32), np.clip(fr["closed"], 0, 1).astype(np.float32),
                      fr["speech"] > 0.5)
