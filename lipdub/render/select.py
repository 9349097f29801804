"""Choosing a source frame for every output frame: target mapping, costs, and a Viterbi path.

Pure numpy, milliseconds for minutes of video: each output frame keeps its ``K`` best candidates by
match cost (computed a block of frames at a time), and the dynamic programme runs over those (K x K
per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipdub.audio.track import MouthTrack


@dataclass
class Targets:
    """What each output frame's mouth should look like, in this template's own units."""

    gap: np.ndarray  # (T,) inner-lip gap / inter-ocular distance
    width: np.ndarray  # (T,) corner distance / inter-ocular distance
    speech: np.ndarray  # (T,) bool
    rest: float  # the template's resting gap


@dataclass
class Costs:
    """Weights of the retrieval cost (unary terms are squared, in units of the given tolerances)."""

    gap_tol: float = 0.015  # iod: a gap error this large costs 1 (0.022 followed the track with r 0.86 on five
    # corpus templates, 0.015 with 0.89, for 9% more cuts between source runs)
    width_tol: float = 0.06
    width_weight: float = 0.25
    base_pose_weight: float = 4.0  # source head pose unlike the frame it is pasted on: alignment strain
    # Source jaw line unlike the frame's (RMS of the upper jaw points, iod): the lower face is fitted onto
    # the frame's jaw, and the further it must be bent, the more its own outline and shading show.
    base_jaw_weight: float = 60.0
    jaw_free: float = 0.04  # iod: jaw lines this close cost nothing (the mesh's own jitter, a calm head)
    same_frame_bonus: float = 0.6  # the template frame's own mouth needs no compositing at all
    unary_cap: float = 30.0
    hold: float = 0.5  # repeating a source frame in speech (in silence: hold_silent)
    hold_silent: float = 0.05
    near: float = 0.5  # skipping or stepping back a frame or two
    jump: float = 1.6  # any other jump, plus pose, light and teeth differences below
    pose_weight: float = 6.0
    light_weight: float = 0.08  # per Lab unit
    teeth_weight: float = 1.2
    # A source whose stored region the frame's edge cut where the output frame needs it: beyond the cut
    # there is nothing to paste. Up to edge_free (iod) falls in the mask's faint outer feather, where the
    # frame's own pixels take over unseen; beyond, each edge_tol more costs 1 (squared, not capped).
    edge_free: float = 0.05
    edge_tol: float = 0.01


def map_targets(track: MouthTrack, bank_gap: np.ndarray, bank_width: np.ndarray) -> Targets:
    """Map the speaker-independent track onto this template's own range of mouth shapes.

    Opening: a mix of the frame's rank among the job's speaking frames and its absolute value picks
    a quantile of the bank's gaps (so the output's openings span what this person really does);
    silence and closures give the template's resting mouth.
    """
    o = np.clip(track.open.astype(np.float64), 0, 1) * (1 - np.clip(track.closed.astype(np.float64), 0, 1))
    g = np.sort(bank_gap.astype(np.float64))
    rest = float(np.quantile(g, 0.05))
    speaking = o > 0.02
    q = np.zeros(len(o))
    if speaking.any():
        ranks = average_ranks(o[speaking]) / (speaking.sum() + 1)
        top = max(float(np.quantile(o[speaking], 0.98)), 0.15)
        q[speaking] = 0.5 * ranks + 0.5 * np.clip(o[speaking] / top, 0, 1)
    lo_q, hi_q = 0.12, 0.985
    gap = np.where(speaking, np.quantile(g, lo_q + (hi_q - lo_q) * q), rest)
    gap = np.where(track.closed > 0.5, float(g[0]), gap)
    w = bank_width.astype(np.float64)
    w50, w05, w95 = (float(np.quantile(w, p)) for p in (0.5, 0.05, 0.95))
    spread = np.clip(track.width, -1, 1) - np.clip(track.round, 0, 1)
    width = np.where(spread >= 0, w50 + spread * (w95 - w50), w50 + spread * (w50 - w05))
    return Targets(gap.astype(np.float32), width.astype(np.float32), track.speech.astype(bool), rest)


def missing_region(needed: np.ndarray, available: np.ndarray) -> np.ndarray:
    """(..., ) how much (inter-ocular distances, summed over the four sides) of the needed extents lies
    beyond the available ones; broadcasts over leading axes."""
    near = np.maximum(available[..., :2] - needed[..., :2], 0.0).sum(-1)  # left, top
    far = np.maximum(needed[..., 2:] - available[..., 2:], 0.0).sum(-1)  # right, bottom
    return near + far


# In :func:`pose_misfit`, a jaw line this many times as far off (RMS, iod) counts as much as a pose.
JAW_MISFIT_SCALE = 3.0


def pose_distance(source_pose: np.ndarray, base_pose: np.ndarray) -> np.ndarray:
    """Distance between pose descriptors (roll, yaw and pitch proxies), broadcasting over leading axes."""
    return np.sqrt(((source_pose[..., :3] - base_pose[..., :3]) ** 2).sum(-1) + 1e-12)


def jaw_distance(source_jaw: np.ndarray, base_jaw: np.ndarray) -> np.ndarray:
    """RMS distance between jaw descriptors (iod), broadcasting over leading axes."""
    return np.sqrt(((source_jaw - base_jaw) ** 2).mean(-1))


def pose_misfit(source_pose: np.ndarray, base_pose: np.ndarray, source_jaw: np.ndarray,
                base_jaw: np.ndarray) -> np.ndarray:
    """How unlike the frame it is pasted on a source's head pose and jaw line are, in one number."""
    return pose_distance(source_pose, base_pose) + JAW_MISFIT_SCALE * jaw_distance(source_jaw, base_jaw)


def unary_costs(t: Targets, bank, base_frames: np.ndarray, base_pose: np.ndarray, c: Costs,
                base_need: np.ndarray | None = None, bank_extent: np.ndarray | None = None,
                base_jaw: np.ndarray | None = None, bank_jaw: np.ndarray | None = None) -> np.ndarray:
    """(T, S) match cost of every bank entry for every output frame; with ``base_need`` (T, 4) and
    ``bank_extent`` (S, 4) (:func:`lipdub.render.bank.needed_extent`, :func:`~lipdub.render.bank.image_extent`),
    also for the part of a frame's region a source's crop does not reach; with ``base_jaw`` (T, 8) and
    ``bank_jaw`` (S, 8) (:func:`lipdub.render.bank.jaw_descriptor`), for a jaw line unlike the frame's."""
    u = ((bank.gap[None, :] - t.gap[:, None]) / c.gap_tol) ** 2
    u += c.width_weight * ((bank.width[None, :] - t.width[:, None]) / c.width_tol) ** 2
    u += c.base_pose_weight * pose_distance(bank.pose[None, :], base_pose[:, None])
    if base_jaw is not None and bank_jaw is not None:
        u += c.base_jaw_weight * np.maximum(jaw_distance(bank_jaw[None, :], base_jaw[:, None]) - c.jaw_free, 0.0)
    u = np.minimum(u, c.unary_cap)
    if base_need is not None and bank_extent is not None:
        missing = missing_region(base_need[:, None, :], bank_extent[None, :, :])
        u += (np.maximum(missing - c.edge_free, 0.0) / c.edge_tol) ** 2
    u -= c.same_frame_bonus * (bank.frames[None, :] == base_frames[:, None])
    return u.astype(np.float32)


def transition_costs(bank, prev: np.ndarray, cur: np.ndarray, silent: bool | np.ndarray, c: Costs) -> np.ndarray:
    """(..., len(prev), len(cur)) cost of going from bank entry ``prev[..., a]`` to ``cur[..., b]``: one
    step, or a block of steps at once (leading dimensions, with ``silent`` per step)."""
    d = bank.frames[cur][..., None, :] - bank.frames[prev][..., :, None]
    pose = np.sqrt(((bank.pose[cur][..., None, :, :3] - bank.pose[prev][..., :, None, :3]) ** 2).sum(-1))
    light = np.abs(bank.light[cur][..., None, :, :] - bank.light[prev][..., :, None, :]).sum(-1)
    teeth = np.abs(bank.teeth[cur][..., None, :] - bank.teeth[prev][..., :, None])
    far = c.jump + c.pose_weight * pose + c.light_weight * light + c.teeth_weight * teeth
    cost = np.where((d == -1) | (d == 2) | (d == 3), c.near, far)
    hold = np.where(np.asarray(silent)[..., None, None], c.hold_silent, c.hold)
    cost = np.where(d == 0, hold, cost)
    return np.where(d == 1, 0.0, cost).astype(np.float32)


def candidates(t: Targets, bank, base_frames: np.ndarray, base_pose: np.ndarray, c: Costs, k: int = 40,
               block: int = 256, base_need: np.ndarray | None = None, bank_extent: np.ndarray | None = None,
               base_jaw: np.ndarray | None = None, bank_jaw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` cheapest bank entries for every output frame, (T, k), and their match costs, (T, k).

    Costs are computed a block of output frames at a time, so memory is O(block x S), not O(T x S):
    a 10-minute output against a 2-minute template would otherwise hold gigabytes of costs.
    """
    n_t, n_s = len(t.gap), len(bank.gap)
    k = min(k, n_s)
    cand = np.empty((n_t, k), np.int64)
    cost = np.empty((n_t, k), np.float32)
    for a in range(0, n_t, block):
        rows = slice(a, min(a + block, n_t))
        part = Targets(t.gap[rows], t.width[rows], t.speech[rows], t.rest)
        u = unary_costs(part, bank, base_frames[rows], base_pose[rows], c,
                        None if base_need is None else base_need[rows], bank_extent,
                        None if base_jaw is None else base_jaw[rows], bank_jaw)
        best = np.argpartition(u, k - 1, axis=1)[:, :k] if k < n_s else np.tile(np.arange(n_s), (len(u), 1))
        cand[rows] = best
        cost[rows] = np.take_along_axis(u, best, 1)
    return cand, cost


def viterbi(cand: np.ndarray, cost: np.ndarray, bank, speech: np.ndarray, c: Costs, block: int = 256) -> np.ndarray:
    """The bank entry for every output frame, among its candidates (from :func:`candidates`),
    minimising match cost plus transition cost.

    Transition costs are computed for ``block`` steps at a time (vectorised, O(block x K x K) memory);
    only the recursion itself steps frame by frame.
    """
    n_t, k = cand.shape
    score = cost[0].astype(np.float64)
    back = np.zeros((n_t, k), np.int32)
    cols = np.arange(k)
    for a in range(1, n_t, block):
        b = min(a + block, n_t)
        trans = transition_costs(bank, cand[a - 1 : b - 1], cand[a:b], ~speech[a:b].astype(bool), c)
        for t in range(a, b):
            total = score[:, None] + trans[t - a]
            back[t] = np.argmin(total, 0)
            score = total[back[t], cols] + cost[t]
    path = np.zeros(n_t, np.int64)
    a = int(np.argmin(score))
    for t in range(n_t - 1, -1, -1):
        path[t] = cand[t, a]
        a = int(back[t, a])
    return path


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties sharing their mean rank (scipy.stats.rankdata's default; importing
    scipy.stats costs 0.6 s of every job's start)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.concatenate([[True], xs[1:] != xs[:-1]])  # first of each run of equal values
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(xs))  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(xs), np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks
