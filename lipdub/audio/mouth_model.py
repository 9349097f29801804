"""The learned speech-to-mouth model: a window of per-hop speech measurements -> the mouth's opening and
width on one video frame.

It was trained on real talking-head video (``scripts/train_mouth.py``, model card in
``docs/mouth_model.md``): the labels are the product's own face-mesh measurements of each speaker's
mouth, normalised per speaker, and the inputs are what the speech analysis already computes (log-mel
bands, loudness, voicing, bursts, VAD and the phone/acoustic fusion's own curves), normalised per
recording so that level, microphone and language drop out. Inference is a few matrix products in numpy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lipdub.audio.features import HOP_S, Features

WEIGHTS = Path(__file__).with_name("mouth_model.npz")
OUTPUTS = ("open", "width")
# The fusion's per-hop curves given to the model, in this order.
CURVES = ("open", "width", "round", "closed", "speech")


@dataclass
class Net:
    """A fully connected network over a window of hops centred on a video frame's time."""

    mean: np.ndarray  # (D,) input standardisation
    scale: np.ndarray  # (D,)
    weights: list[np.ndarray]  # per layer (in, out); ReLU between layers
    biases: list[np.ndarray]
    out_mean: np.ndarray = field(default_factory=lambda: np.zeros(len(OUTPUTS), np.float32))
    out_scale: np.ndarray = field(default_factory=lambda: np.ones(len(OUTPUTS), np.float32))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, D) windows -> (n, len(OUTPUTS)) in label units."""
        h = (x - self.mean) / self.scale
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                np.maximum(h, 0.0, out=h)
        return h * self.out_scale + self.out_mean


@dataclass
class MouthModel:
    """The mean of its members' predictions (a linear model and a one-hidden-layer network: each is
    right where the other is not, and leave-one-speaker-out scores their mean above either)."""

    offsets: np.ndarray  # (W,) hop offsets of the window, relative to the frame's own hop
    members: list[Net]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.mean([m.predict(x) for m in self.members], axis=0).astype(np.float32)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """(n, H) the hidden layer of the network member: what the model makes of the speech, where two
        frames of one speaker that sound alike lie close (:mod:`lipdub.audio.adapt` searches it)."""
        net = next(m for m in self.members if len(m.weights) > 1)
        h = (x - net.mean) / net.scale @ net.weights[0] + net.biases[0]
        return np.maximum(h, 0.0, out=h).astype(np.float32)

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {"offsets": self.offsets}
        for j, m in enumerate(self.members):
            arrays.update({f"m{j}_mean": m.mean, f"m{j}_scale": m.scale, f"m{j}_out_mean": m.out_mean,
                           f"m{j}_out_scale": m.out_scale})
            for i, (w, b) in enumerate(zip(m.weights, m.biases, strict=True)):
                arrays[f"m{j}_w{i}"], arrays[f"m{j}_b{i}"] = w.astype(np.float32), b.astype(np.float32)
        np.savez_compressed(path, **{k: np.asarray(v, np.float32) if k != "offsets" else v
                                     for k, v in arrays.items()})

    @classmethod
    def load(cls, path: str | Path) -> MouthModel:
        with np.load(path) as z:
            members = []
            j = 0
            while f"m{j}_mean" in z.files:
                n = sum(1 for k in z.files if k.startswith(f"m{j}_w"))
                members.append(Net(z[f"m{j}_mean"], z[f"m{j}_scale"], [z[f"m{j}_w{i}"] for i in range(n)],
                                   [z[f"m{j}_b{i}"] for i in range(n)], z[f"m{j}_out_mean"], z[f"m{j}_out_scale"]))
                j += 1
            if not members:
                raise ValueError(f"{path} holds no mouth model")
            return cls(z["offsets"].astype(np.int64), members)


@functools.lru_cache(maxsize=1)
def bundled() -> MouthModel:
    """The model shipped inside the package."""
    if not WEIGHTS.exists():
        raise FileNotFoundError(f"The mouth model {WEIGHTS} is missing; reinstall lipdub.")
    return MouthModel.load(WEIGHTS)


def hop_inputs(features: Features, curves: dict[str, np.ndarray], speech: np.ndarray) -> np.ndarray:
    """(n_hops, D) per-hop inputs, normalised over this recording: each mel band and the loudness by
    their mean and spread over its speech, so one voice, microphone or level looks like another."""
    ref = speech.astype(bool) if speech.any() else np.ones(len(speech), bool)
    mel = features.mel_db.astype(np.float64)
    mel = (mel - mel[ref].mean(0)) / (mel[ref].std(0) + 1.0)
    rms = features.rms_db.astype(np.float64)
    rms = (rms - np.median(rms[ref])) / 10.0
    rows = [mel, rms[:, None], features.voicing[:, None], features.burst[:, None]]
    rows += [np.asarray(curves[k], np.float64)[:, None] for k in CURVES]
    return np.concatenate(rows, axis=1).astype(np.float32)


def frame_hops(fps: float, n_frames: int) -> np.ndarray:
    """The hop at each video frame's own instant (frame i shows time i / fps)."""
    return np.round(np.arange(n_frames) / fps / HOP_S).astype(np.int64)


def windows(inputs: np.ndarray, centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(len(centres), W * D) the inputs at ``centres + offsets``, edges held at the first/last hop."""
    idx = np.clip(centres[:, None] + offsets[None, :], 0, len(inputs) - 1)
    return inputs[idx].reshape(len(centres), -1)


def predict_frames(model: MouthModel, inputs: np.ndarray, fps: float, n_frames: int,
                   block: int = 4096) -> dict[str, np.ndarray]:
    """Per-frame outputs for ``n_frames`` frames at ``fps``, and each frame's ``embedding``; a block of
    frames at a time, so an hour of speech never holds more than one block of windows."""
    hops = frame_hops(fps, n_frames)
    out = np.empty((n_frames, len(OUTPUTS)), np.float32)
    embedding = []
    for a in range(0, n_frames, block):
        x = windows(inputs, hops[a: a + block], model.offsets)
        out[a: a + block] = model.predict(x)
        embedding.append(model.embed(x))
    result = {k: out[:, i] for i, k in enumerate(OUTPUTS)}
    result["embedding"] = np.concatenate(embedding) if embedding else np.zeros((0, 0), np.float32)
    return result
