"""Time-stamped phones from pocketsphinx's bundled en-us model: phone-loop (allphone) recognition for
any speech, or forced alignment when the transcript is known (much more precise)."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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


# Allphone is noisy: one decode's bilabials and vowels flip with the language weight. Two decodes, one
# leaning on the acoustics (lw 2, the CMU tutorial's value) and one on the phone bigram (lw 4), are
# averaged downstream; where they disagree the shape is half-way, which is the honest answer. (lw 2
# alone scores as well on the tracks but worse once rendered: eval suite mean open_r 0.522 against 0.549.)
ALLPHONE_LWS = (2.0, 4.0)


# The phone loop needs no words, but pocketsphinx needs a dictionary: a one-word one loads in 10 ms where
# CMUdict's 135,000 words take 110 ms, for every chunk (the phones come out the same).
ALLPHONE_DICT = str(Path(__file__).with_name("allphone.dict"))


def _allphone_decoder(lw: float = 2.0):  # noqa: ANN202 - pocketsphinx type
    # A fresh decoder per chunk: a reused one carries adaptation state between utterances, which would
    # make results depend on what was decoded before.
    import pocketsphinx

    hmm, _, phone_lm = _model_paths()
    # lw 2 keeps the phone bigram from overriding the acoustics (values from the CMU allphone tutorial);
    # batch CMN normalises each chunk on its own, so results do not depend on what was decoded before.
    cfg = pocketsphinx.Config(hmm=hmm, dict=ALLPHONE_DICT, allphone=phone_lm, lm=None, beam=1e-20, pbeam=1e-20,
                              lw=lw, cmn="batch", loglevel="ERROR")
    return pocketsphinx.Decoder(cfg)


def recognise(x: np.ndarray, sr: int, offset_s: float = 0.0, lw: float = 2.0) -> list[Phone]:
    """Phone-loop recognition of one chunk (16 kHz); times are shifted by ``offset_s``."""
    if sr != 16000:
        raise ValueError("pocketsphinx needs 16 kHz audio")
    d = _allphone_decoder(lw)
    d.start_utt()
    d.process_raw(_pcm16(x), full_utt=True)
    d.end_utt()
    out = []
    for s in d.seg():
        out.append(Phone(_norm_label(s.word), offset_s + s.start_frame * HOP_S, offset_s + (s.end_frame + 1) * HOP_S))
    return out


class Recogniser:
    """Allphone decodes of many chunks, in submission order, spread over worker processes when that pays.

    pocketsphinx holds the GIL, so threads would not help; two processes halve the wait for the
    decodes (the longest part of speech analysis) on a 2-core machine. Workers are plain
    ``python -m lipdub.audio.phone_worker`` children talking over pipes, not multiprocessing: that
    would re-import the caller's main script in every worker. Short audio or one core decode in this
    process, and so does every chunk after a worker fails.
    """

    MIN_PARALLEL_S = 20.0  # below this, starting the workers (~0.5 s) costs more than it saves

    def __init__(self, audio_s: float, jobs: int) -> None:
        from lipdub.device import cpu_count

        self._workers: list[subprocess.Popen] = []
        self._busy: list[int | None] = []  # per worker: index of the job it is decoding
        self._jobs: dict[int, tuple[np.ndarray, int, float, float]] = {}  # in flight, kept for a retry
        self._done: list[list[Phone] | None] = []
        n = min(cpu_count(), jobs)
        if audio_s >= self.MIN_PARALLEL_S and n >= 2:
            try:
                # The workers import this very copy of lipdub, wherever it was imported from.
                here = str(Path(__file__).resolve().parents[2])
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                    p for p in (here, os.environ.get("PYTHONPATH", "")) if p)}
                for _ in range(n):
                    self._workers.append(subprocess.Popen(
                        [sys.executable, "-m", "lipdub.audio.phone_worker"], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env))
                    self._busy.append(None)
            except OSError as e:
                log.debug("phone decodes in this process: %s", e)
                self.close()

    def submit(self, x: np.ndarray, sr: int, offset_s: float, lw: float) -> None:
        """Queue one chunk; :meth:`results` returns every chunk's phones in submission order."""
        k = len(self._done)
        self._done.append(None)
        if not self._workers:
            self._done[k] = recognise(x, sr, offset_s, lw)
            return
        while None not in self._busy:
            self._collect(min(j for j in self._busy if j is not None))
            if not self._workers:
                self._done[k] = recognise(x, sr, offset_s, lw)
                return
        w = self._busy.index(None)
        self._jobs[k] = (x, sr, offset_s, lw)
        try:
            _send(self._workers[w].stdin, (np.asarray(x, np.float32), sr, offset_s, lw))
            self._busy[w] = k
        except OSError:
            self._fail(f"worker {w} stopped taking work")

    def _collect(self, k: int) -> None:
        w = self._busy.index(k)
        try:
            self._done[k] = _receive(self._workers[w].stdout)
            self._busy[w] = None
            del self._jobs[k]
        except (OSError, EOFError, pickle.UnpicklingError) as e:
            self._fail(f"worker {w} failed: {e}")

    def _fail(self, why: str) -> None:
        """Stop the workers and decode whatever they held here."""
        log.warning("Phone recognition continues in this process (%s).", why)
        self.close()
        for k, args in sorted(self._jobs.items()):
            self._done[k] = recognise(*args)
        self._jobs.clear()

    def results(self) -> list[list[Phone]]:
        while self._workers and any(j is not None for j in self._busy):
            self._collect(min(j for j in self._busy if j is not None))
        self.close()
        if any(r is None for r in self._done):
            raise RuntimeError("a phone-recognition job was lost")  # a bug, never a silent gap
        return [r for r in self._done if r is not None]

    def __enter__(self) -> Recogniser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers: idle ones exit when their input closes; busy ones (an error cut the
        analysis short) are killed rather than waited for."""
        for p, job in zip(self._workers, self._busy, strict=True):
            if job is not None:
                p.kill()
            for stream in (p.stdin, p.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._workers, self._busy = [], []


def _send(stream, obj: object) -> None:  # noqa: ANN001 - a binary pipe
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream) -> object:  # noqa: ANN001 - a binary pipe
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the worker closed its output")
    size = struct.unpack("<Q", head)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the worker's answer was cut short")
    return pickle.loads(data)


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
