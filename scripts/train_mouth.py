"""Train the speech-to-mouth model on ../shared/corpus, cross-validate it leave-one-speaker-out, and
write the weights into the package (lipdub/audio/mouth_model.npz).

    python scripts/train_mouth.py                       # measure (once), offsets, LOSO report, train, save
    python scripts/train_mouth.py --report docs/mouth_model_results.md

Seeded: the same corpus gives the same weights. Never run it on ../shared/media (the yardstick).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lipdub.audio.adapt import MAX_OFFSET_FRAMES, adapt, best_offset, fit_from_track, kept_delay
from lipdub.audio.features import Features
from lipdub.audio.fusion import track_from_curves
from lipdub.audio.mouth_model import (
    CURVES,
    OUTPUTS,
    WEIGHTS,
    MouthModel,
    Net,
    frame_hops,
    hop_inputs,
    windows,
)
from lipdub.audio.track import MouthTrack

log = logging.getLogger("train_mouth")
REPO = Path(__file__).resolve().parents[1]
OFFSETS = np.arange(-24, 25, 3)  # hops: 240 ms either side of the frame
MAX_LAG = 10  # frames searched for a clip's sound/picture offset
SEED = 7


@dataclass
class Clip:
    name: str
    speaker: str
    fps: float
    open: np.ndarray  # per frame, normalised label (NaN where no face)
    width: np.ndarray
    inputs: np.ndarray  # per hop
    fusion_open: np.ndarray  # per frame, today's track
    loudness: np.ndarray  # per frame, rms dB
    offset: int = 0  # frames the picture is late against the sound

    def __len__(self) -> int:
        return len(self.open)


def normalise(v: np.ndarray, found: np.ndarray, centre: float) -> np.ndarray:
    """Per speaker: 5th..95th percentile of the clip to a unit range, anchored at ``centre``."""
    ok = v[found]
    p5, p50, p95 = np.percentile(ok, [5, 50, 95])
    base = p5 if centre == 0 else p50
    out = (v - base) / max(p95 - p5, 1e-6) * (1 if centre == 0 else 2)
    return np.where(found, out, np.nan).astype(np.float32)


def load(work: Path) -> list[Clip]:
    clips = []
    for p in sorted(work.glob("*.npz")):
        z = np.load(p)
        fps, n = float(z["fps"]), len(z["gap"])
        found = z["found"].astype(bool) & np.isfinite(z["gap"])
        curves = {k: z[f"fusion_{k}"] for k in CURVES}
        F = Features(z["rms_db"], z["bands_db"], np.zeros(len(z["rms_db"])), np.zeros(len(z["rms_db"])),
                     z["voicing"], z["burst"], z["mel_db"])
        inputs = hop_inputs(F, curves, z["speech"])
        today = track_from_curves(curves, fps, n)
        hops = np.clip(frame_hops(fps, n), 0, len(F) - 1)
        rms = np.convolve(z["rms_db"], np.ones(3) / 3, mode="same")[hops]
        clips.append(Clip(p.stem, str(z["speaker"]), fps, normalise(z["gap"], found, 0),
                          normalise(z["width"], found, 0.5), inputs, today.open, rms.astype(np.float32)))
    return clips


def lagged(pred: np.ndarray, truth: np.ndarray, lag: int) -> float:
    """Pearson r of pred[i] with truth[i + lag] (positive lag: the picture is late)."""
    if lag >= 0:
        a, b = pred[: len(pred) - lag], truth[lag:]
    else:
        a, b = pred[-lag:], truth[: len(truth) + lag]
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 10 or a[ok].std() < 1e-9 or b[ok].std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def best_lag(pred: np.ndarray, truth: np.ndarray, max_lag: int = MAX_LAG) -> int:
    return max(range(-max_lag, max_lag + 1), key=lambda k: lagged(pred, truth, k))


def shifted(v: np.ndarray, lag: int) -> np.ndarray:
    """v[i + lag] at i, NaN past the ends: a label moved onto the sound's time."""
    out = np.full(len(v), np.nan, np.float32)
    if lag >= 0:
        out[: len(v) - lag] = v[lag:]
    else:
        out[-lag:] = v[: len(v) + lag]
    return out


def dataset(clips: list[Clip]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for c in clips:
        y = np.stack([shifted(c.open, c.offset), shifted(c.width, c.offset)], 1)
        ok = np.isfinite(y).all(1)
        xs.append(windows(c.inputs, frame_hops(c.fps, len(c))[ok], OFFSETS))
        ys.append(y[ok])
    return np.concatenate(xs), np.concatenate(ys)


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 300.0) -> MouthModel:
    mean, scale = x.mean(0), x.std(0) + 1e-3
    xs = (x - mean) / scale
    ym = y.mean(0)
    w = np.linalg.solve(xs.T @ xs + alpha * np.eye(xs.shape[1]), xs.T @ (y - ym))
    return MouthModel(OFFSETS, [Net(mean.astype(np.float32), scale.astype(np.float32), [w.astype(np.float32)],
                                    [ym.astype(np.float32)])])


def fit_mlp(x: np.ndarray, y: np.ndarray, hidden: int = 48, epochs: int = 30, lr: float = 2e-3,
            decay: float = 1e-3, dropout: float = 0.2, seed: int = SEED) -> MouthModel:
    """One hidden layer, Adam on a weighted squared error (opening counts twice), input dropout."""
    rng = np.random.default_rng(seed)
    mean, scale = x.mean(0), x.std(0) + 1e-3
    xs = ((x - mean) / scale).astype(np.float32)
    ym, ysd = y.mean(0), y.std(0) + 1e-6
    yt = ((y - ym) / ysd).astype(np.float32)
    wt = np.array([2.0, 1.0], np.float32)[: y.shape[1]]
    d = xs.shape[1]
    params = [rng.normal(0, np.sqrt(2 / d), (d, hidden)).astype(np.float32), np.zeros(hidden, np.float32),
              rng.normal(0, np.sqrt(1 / hidden), (hidden, y.shape[1])).astype(np.float32),
              np.zeros(y.shape[1], np.float32)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(xs))
        for a in range(0, len(xs), 128):
            idx = order[a: a + 128]
            xb, yb = xs[idx], yt[idx]
            if dropout:
                xb = xb * (rng.random(xb.shape, dtype=np.float32) > dropout) / (1 - dropout)
            h_pre = xb @ params[0] + params[1]
            h = np.maximum(h_pre, 0)
            out = h @ params[2] + params[3]
            g_out = 2 * (out - yb) * wt / len(idx)
            g = [None, None, h.T @ g_out, g_out.sum(0)]
            g_h = (g_out @ params[2].T) * (h_pre > 0)
            g[0], g[1] = xb.T @ g_h, g_h.sum(0)
            step += 1
            for i, p in enumerate(params):
                gi = g[i] + (decay * p if i % 2 == 0 else 0)
                m[i] = 0.9 * m[i] + 0.1 * gi
                v[i] = 0.999 * v[i] + 0.001 * gi * gi
                p -= lr * (m[i] / (1 - 0.9 ** step)) / (np.sqrt(v[i] / (1 - 0.999 ** step)) + 1e-8)
    return MouthModel(OFFSETS, [Net(mean.astype(np.float32), scale.astype(np.float32), [params[0], params[2]],
                                    [params[1], params[3]], ym.astype(np.float32), ysd.astype(np.float32))])


def fit_both(x: np.ndarray, y: np.ndarray) -> MouthModel:
    """The shipped model: the ridge regression and the network, averaged."""
    return MouthModel(OFFSETS, fit_ridge(x, y).members + fit_mlp(x, y).members)


def predict_clip(model: MouthModel, c: Clip) -> np.ndarray:
    return model.predict(windows(c.inputs, frame_hops(c.fps, len(c)), OFFSETS))


def loso(clips: list[Clip], fit, label: str, models: dict | None = None) -> dict[str, np.ndarray]:
    """Held-out predictions for every clip from a model trained on the other speakers (the models
    themselves go into ``models`` by clip name, if given)."""
    preds = {}
    for spk in sorted({c.speaker for c in clips}):
        train = [c for c in clips if c.speaker != spk]
        model = fit(*dataset(train))
        for c in clips:
            if c.speaker == spk:
                preds[c.name] = predict_clip(model, c)
                if models is not None:
                    models[c.name] = model
    log.info("LOSO %s done", label)
    return preds


def summary(clips: list[Clip], series: dict[str, dict[str, np.ndarray]], corrected: bool) -> list[str]:
    """Markdown rows: per clip r at lag 0 of each series against the (offset-corrected) opening."""
    names = list(series)
    rows = ["| clip | speaker | frames | offset | " + " | ".join(names) + " |",
            "|---|---|---|---|" + "---|" * len(names)]
    rs = {k: [] for k in names}
    for c in clips:
        truth = shifted(c.open, c.offset) if corrected else c.open
        vals = []
        for k in names:
            r = lagged(series[k][c.name], truth, 0)
            rs[k].append(r)
            vals.append(f"{r:.2f}")
        rows.append(f"| {c.name[:40]} | {c.speaker} | {len(c)} | {c.offset:+d} | " + " | ".join(vals) + " |")
    w = np.array([np.isfinite(c.open).sum() for c in clips], float)
    rows.append("| **mean per clip** | | | | " + " | ".join(f"**{np.mean(rs[k]):.3f}**" for k in names) + " |")
    rows.append("| **frame-weighted** | | | | " + " | ".join(f"**{np.average(rs[k], weights=w):.3f}**"
                                                             for k in names) + " |")
    return rows


def refit_last_layer(net: Net, x: np.ndarray, y: np.ndarray, strength: float) -> Net:
    """The network's opening output refitted on one speaker's frames, pulled towards the generic weights."""
    h = np.maximum((x - net.mean) / net.scale @ net.weights[0] + net.biases[0], 0)
    hb = np.c_[h, np.ones(len(h))]
    w0 = np.r_[net.weights[1][:, 0], net.biases[1][0]]
    yt = (y - net.out_mean[0]) / net.out_scale[0]
    w = np.linalg.solve(hb.T @ hb + strength * np.eye(len(w0)), hb.T @ yt + strength * w0)
    weights, biases = net.weights[1].copy(), net.biases[1].copy()
    weights[:, 0], biases[0] = w[:-1], w[-1]
    return Net(net.mean, net.scale, [net.weights[0], weights], [net.biases[0], biases], net.out_mean, net.out_scale)


def neighbour_blend(c: Clip, opening: np.ndarray, embedding: np.ndarray, half: int) -> np.ndarray:
    """The second half's opening as the product adapts it to the speaker from the first half."""
    speech = c.inputs[np.clip(frame_hops(c.fps, len(c)), 0, len(c.inputs) - 1), -1] > 0.5
    zeros = np.zeros(len(c), np.float32)

    def track(part: slice) -> MouthTrack:
        return MouthTrack(c.fps, opening[part].astype(np.float32), zeros[part], zeros[part], zeros[part],
                          speech[part], embedding=embedding[part])

    fit = fit_from_track(track(slice(0, half)), c.open[:half], np.isfinite(c.open[:half]))
    second = track(slice(half, len(c)))
    # The blend alone: this table scores against offset-corrected mouths, where a kept delay cannot gain
    # (timing_adaptation scores that against the mouths as recorded).
    return (adapt(second, replace(fit, lag_s=0.0)) if fit is not None else second).open


def adaptation(clips: list[Clip], preds: dict[str, np.ndarray], nets: dict[str, MouthModel]) -> list[str]:
    """Per-speaker adaptation, cross-validated within each held-out clip: fit on its first half (the
    avatar's own speech and mouth), score on its second half against the generic prediction. A scale
    and offset cannot change r; a lag, a refitted last layer (three strengths) and the shipped nearest-
    neighbour blend (lipdub.audio.adapt, which finds the offset itself) can."""
    strengths = (10.0, 100.0, 1000.0)
    rows = ["| clip | generic | lag fit (chosen) | " + " | ".join(f"last layer, pull {s:g}" for s in strengths)
            + " | shipped: neighbours |", "|---|---|---|" + "---|" * (len(strengths) + 1)]
    cols: list[list[float]] = [[] for _ in range(3 + len(strengths))]
    for c in clips:
        truth = shifted(c.open, c.offset)
        p = preds[c.name][:, 0]
        half = len(c) // 2
        if half < 60:
            continue
        lag = best_lag(p[:half], truth[:half], 3)
        vals = [lagged(p[half:], truth[half:], 0), lagged((shifted(p, -lag) if lag else p)[half:], truth[half:], 0)]
        x = windows(c.inputs, frame_hops(c.fps, len(c)), OFFSETS)
        ok = np.isfinite(truth[:half])
        network = nets[c.name].members[-1]
        for s in strengths:
            tuned = refit_last_layer(network, x[:half][ok], truth[:half][ok], s)
            mixed = p + 0.5 * (tuned.predict(x)[:, 0] - network.predict(x)[:, 0])  # the network's half retuned
            vals.append(lagged(mixed[half:], truth[half:], 0))
        vals.append(lagged(neighbour_blend(c, np.clip(p, 0, 1), nets[c.name].embed(x), half), truth[half:], 0))
        for col, v in zip(cols, vals, strict=True):
            col.append(v)
        rows.append(f"| {c.name[:40]} | {vals[0]:.2f} | {vals[1]:.2f} ({lag:+d}) | "
                    + " | ".join(f"{v:.2f}" for v in vals[2:]) + " |")
    rows.append("| **mean** | " + " | ".join(f"**{np.mean(col):.3f}**" for col in cols) + " |")
    return rows


def timing_adaptation(clips: list[Clip], preds: dict[str, np.ndarray], window_s: tuple[float, ...] = (2.5, 3.0, 4.0)
                      ) -> list[str]:
    """The delay the product keeps (lipdub.audio.adapt.kept_delay), cross-validated against the mouths
    as recorded: a window of each held-out clip (every whole second along it) plays the template, the
    rest of the clip scores. Offset-corrected labels cannot reward a delay, so they are not used here."""
    rows = ["| template window | clips | generic | delay kept | clips worse by over 0.02 | "
            "other speakers' mouths given a delay |", "|---|---|---|---|---|---|"]
    rng = np.random.default_rng(SEED)

    def delay(p: np.ndarray, real: np.ndarray, fps: float) -> int:
        return kept_delay(p, real, best_offset(p, real, MAX_OFFSET_FRAMES), fps)

    for secs in window_s:
        pairs, unrelated = [], []
        for c in clips:
            n, k, p = len(c), int(secs * c.fps), np.clip(preds[c.name][:, 0], 0, 1)
            if n - k < 3 * c.fps:
                continue
            generic, kept = [], []
            # A template whose sound is not its speaker's (a voice-over): another speaker's mouth.
            other = [o for o in clips if o.speaker != c.speaker and len(o) >= k]
            for s in range(0, n - k + 1, max(1, int(c.fps))):
                win = slice(s, s + k)
                lag = delay(p[win], c.open[win], c.fps)
                rest = np.ones(n, bool)
                rest[win] = False
                generic.append(lagged(np.where(rest, p, np.nan), c.open, 0))
                kept.append(lagged(np.where(rest, shifted(p, -lag), np.nan), c.open, 0))
                o = other[int(rng.integers(len(other)))]
                start = int(rng.integers(len(o) - k + 1))
                unrelated.append(delay(p[win], o.open[start: start + k], c.fps) != 0)
            pairs.append((np.mean(generic), np.mean(kept)))
        a = np.array(pairs)
        rows.append(f"| {secs:g} s | {len(a)} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | "
                    f"{int((a[:, 1] < a[:, 0] - 0.02).sum())} | {100 * np.mean(unrelated):.0f}% of {len(unrelated)} |")
    return rows


def plot(path: Path, clips: list[Clip], preds: dict[str, np.ndarray], names: list[str], seconds: float = 8.0) -> None:
    """Held-out opening against the real mouth for a few clips: what the cross-validation numbers mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [c for c in clips if c.name in names]
    fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.2 * len(chosen)), squeeze=False)
    for ax, c in zip(axes[:, 0], chosen, strict=True):
        n = min(len(c), int(seconds * c.fps))
        t = np.arange(n) / c.fps
        truth = shifted(c.open, c.offset)[:n]
        ax.plot(t, truth, "k", lw=1.6, label="real mouth (face mesh)")
        ax.plot(t, preds[c.name][:n, 0], "tab:blue", lw=1.2,
                label=f"model, speaker held out (r {lagged(preds[c.name][:, 0], shifted(c.open, c.offset), 0):.2f})")
        ax.plot(t, c.fusion_open[:n], "tab:orange", lw=1.0, alpha=0.8,
                label=f"hand-built fusion (r {lagged(c.fusion_open, shifted(c.open, c.offset), 0):.2f})")
        ax.set_title(f"{c.name} [{c.speaker}]", fontsize=9)
        ax.set_ylabel("opening")
        ax.legend(loc="upper right", fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lipdub_mouth_corpus")
    ap.add_argument("--report", type=Path, help="write the cross-validation tables (markdown) here")
    ap.add_argument("--plot", type=Path, help="write a PNG of held-out predictions on three clips here")
    ap.add_argument("--no-save", action="store_true", help="report only; keep the shipped weights")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    subprocess.run([sys.executable, str(REPO / "scripts" / "mouth_corpus.py"), "--corpus", str(a.corpus),
                    "--work", str(a.work)], check=True)
    clips = load(a.work)
    log.info("%d clips, %d speakers, %d frames", len(clips), len({c.speaker for c in clips}),
             sum(len(c) for c in clips))

    # Sound/picture offsets: first against today's speech track, then against a first held-out model,
    # anchored so that the median clip is taken as in sync (most sources are).
    for c in clips:
        c.offset = best_lag(c.fusion_open, c.open)
    first = loso(clips, fit_ridge, "ridge (offsets)")
    lags = np.array([best_lag(first[c.name][:, 0], c.open) for c in clips])
    lags -= int(np.median(lags))
    for c, lag in zip(clips, lags, strict=True):
        c.offset = int(lag)

    series = {"loudness": {c.name: c.loudness for c in clips},
              "today's fusion": {c.name: c.fusion_open for c in clips}}
    ridge = loso(clips, fit_ridge, "ridge")
    nets: dict[str, MouthModel] = {}
    mlp = loso(clips, fit_mlp, "mlp", nets)
    both = {k: 0.5 * (ridge[k] + mlp[k]) for k in ridge}
    series["ridge"] = {k: v[:, 0] for k, v in ridge.items()}
    series["network"] = {k: v[:, 0] for k, v in mlp.items()}
    series["**shipped: mean of both**"] = {k: v[:, 0] for k, v in both.items()}
    width_rows = ["| | r (width, LOSO) |", "|---|---|"]
    for label, pr in (("ridge", ridge), ("network", mlp), ("shipped", both)):
        rs = [lagged(pr[c.name][:, 1], shifted(c.width, c.offset), 0) for c in clips]
        width_rows.append(f"| {label} | {np.mean(rs):.3f} |")
    report = ["## Leave-one-speaker-out: opening, r at lag 0, against the offset-corrected mouth", "",
              *summary(clips, series, True), "",
              "## The same, against the mouth as recorded (no offset correction)", "",
              *summary(clips, series, False), "", "## Width", "", *width_rows, "",
              "## Per-speaker adaptation (held-out model; fit on a clip's first half, scored on its second)", "",
              *adaptation(clips, both, nets), "",
              "## The template's own timing (held-out model; against the mouth as recorded)", "",
              *timing_adaptation(clips, both), ""]
    if a.plot:
        plot(a.plot, clips, both, ["yerfor__MimicTalk__data__raw__German_20s", "sstzal__DFRF__dataset__vids__french",
                                   "bytedance__LatentSync__demo3_video"])
    text = "\n".join(report)
    print(text)
    if a.report:
        a.report.write_text(text)
    if not a.no_save:
        model = fit_both(*dataset(clips))
        model.save(WEIGHTS)
        log.info("Wrote %s (%d bytes) from %d outputs %s", WEIGHTS, WEIGHTS.stat().st_size, len(OUTPUTS), OUTPUTS)


if __name__ == "__main__":
    main()
