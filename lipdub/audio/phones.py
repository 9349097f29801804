"""Time-stamped phones from pocketsphinx's bundled en-us model: phone-loop (allphone) recognition for
any speech, or forced alignment when the transcript is known (much more precise)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lipdub.audio.features import HOP_S

log = logging.getLogger(__name__)

# Forced alignment keeps a full backtrace in memory; above this it is split at pauses per segment
# of text proportional to speech time would be fragile, so longer audio falls back to allphone.
MAX_ALIGN_S = 180.0


@dataclass(frozen=True)
class Phone:
    """One phone (ARPAbet, no stress digits; ``SIL`` for silence/noise) on the global time axis."""

    label: str
    start: float  # seconds
    end: float  # seconds, exclusive


def _model_paths() -> tuple[str, str, str]:
    import pocketsphinx

    root = os.path.join(pocketsphinx.get_model_path(), "en-us")
    return (os.path.join(root, "en-us"), os.path.join(root, "cmudict-en-us.dict"),
            os.path.join(root, "en-us-phone.lm.bin"))


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _norm_label(name: str) -> str:
    name = name.strip().upper()
    if name.startswith("+") or name in ("SIL", "<SIL>", "<S>", "</S>", "[NOISE]", "[SPEECH]"):
        return "SIL"
    return re.sub(r"\d", "", name)


def _allphone_decoder():  # noqa: ANN202 - pocketsphinx type
    # A fresh decoder per chunk (~0.1 s): a reused one carries adaptation state between utterances,
    # which would make results depend on what was decoded before.
    import pocketsphinx

    hmm, dic, phone_lm = _model_paths()
    # lw 2 keeps the phone bigram from overriding the acoustics (values from the CMU allphone tutorial);
    # batch CMN normalises each chunk on its own, so results do not depend on what was decoded before.
    cfg = pocketsphinx.Config(hmm=hmm, dict=dic, allphone=phone_lm, lm=None, beam=1e-20, pbeam=1e-20,
                              lw=2.0, cmn="batch", loglevel="ERROR")
    return pocketsphinx.Decoder(cfg)


def recognise(x: np.ndarray, sr: int, offset_s: float = 0.0) -> list[Phone]:
    """Phone-loop recognition of one chunk (16 kHz); times are shifted by ``offset_s``."""
    if sr != 16000:
        raise ValueError("pocketsphinx needs 16 kHz audio")
    d = _allphone_decoder()
    d.start_utt()
    d.process_raw(_pcm16(x), full_utt=True)
    d.end_utt()
    out = []
    for s in d.seg():
        out.append(Phone(_norm_label(s.word), offset_s + s.start_frame * HOP_S, offset_s + (s.end_frame + 1) * HOP_S))
    return out


# ---- forced alignment -------------------------------------------------------------------------------

_LETTER_PHONES = {  # crude spelling fallback for words missing from CMUdict (names, typos)
    "a": "AE", "b": "B", "c": "K", "d": "D", "e": "EH", "f": "F", "g": "G", "h": "HH", "i": "IH",
    "j": "JH", "k": "K", "l": "L", "m": "M", "n": "N", "o": "AA", "p": "P", "q": "K", "r": "R", "s": "S",
    "t": "T", "u": "AH", "v": "V", "w": "W", "x": "K S", "y": "Y", "z": "Z",
}
_DIGRAPHS = {"th": "TH", "sh": "SH", "ch": "CH", "ph": "F", "ng": "NG", "ee": "IY", "oo": "UW", "ou": "AW",
             "ai": "EY", "ay": "EY", "ea": "IY", "ck": "K", "wh": "W", "qu": "K W"}


def spell_phones(word: str) -> str:
    """Letter-to-sound guess for an out-of-vocabulary word (good enough for mouth shapes)."""
    w, i, out = word.lower(), 0, []
    while i < len(w):
        if w[i:i + 2] in _DIGRAPHS:
            out.append(_DIGRAPHS[w[i:i + 2]])
            i += 2
            continue
        if w[i] in _LETTER_PHONES and not (w[i] == "e" and i == len(w) - 1 and i > 0):
            out.append(_LETTER_PHONES[w[i]])
        i += 1
    return " ".join(out) or "AH"


def normalise_text(text: str) -> list[str]:
    """Lower-case words as CMUdict spells them (apostrophes kept, digits spelled by letter rules)."""
    return re.findall(r"[a-z']+|\d+", text.lower().replace("\u2019", "'"))


@lru_cache(maxsize=1)
def _dictionary_words() -> frozenset[str]:
    words = set()
    with open(_model_paths()[1], encoding="utf-8") as f:
        for line in f:
            words.add(line.split(" ", 1)[0])
    return frozenset(words)


def align(x: np.ndarray, sr: int, text: str) -> list[Phone] | None:
    """Force-align ``text`` to the whole signal; None when alignment fails (wrong transcript)."""
    import pocketsphinx

    words = [w.strip("'") for w in normalise_text(text)]
    words = [w for w in words if w]
    if not words or sr != 16000:
        return None
    hmm, dic, _ = _model_paths()
    d = pocketsphinx.Decoder(pocketsphinx.Config(hmm=hmm, dict=dic, lm=None, loglevel="ERROR", beam=1e-60,
                                                 pbeam=1e-60, wbeam=1e-40, cmn="batch"))
    known = _dictionary_words()
    for w in set(words):
        if w not in known:
            d.add_word(w, spell_phones(w), True)
    pcm = _pcm16(x)
    try:
        d.set_align_text(" ".join(words))
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        if d.hyp() is None:
            return None
        d.set_alignment()
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        out = []
        for word in d.get_alignment():
            for ph in word:
                start = ph.start * HOP_S
                out.append(Phone(_norm_label(ph.name), start, start + ph.duration * HOP_S))
    except RuntimeError as e:
        log.warning("Could not align the transcript to the audio (%s); recognising phones instead.", e)
        return None
    return out or None
