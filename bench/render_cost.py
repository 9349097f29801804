"""Per-frame cost of the render stage at 1080p: what the pipeline's render thread spends per frame.

    python bench/render_cost.py [--frames 300] [--engine retrieval] [--repeat 3] [--profile]

Builds (or reuses) the 1080p25 template of bench/speed.py, analyses it and prepares the engine
through the library once (avatar cache under --work), decodes the frames to memory, then times
``pipeline._render_chunk`` (crop, engine) over them in chunks, as the render thread does, and the blend
of its overlays, which the encoder thread does.
Prints ms/frame for the whole stage and for its named pieces (medians over --repeat passes);
--profile adds a cProfile listing of one pass.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from _common import long_speech
from speed import build_template

from lipdub import pipeline
from lipdub.audio import analyse as analyse_audio
from lipdub.device import select_device
from lipdub.face.analyse import analyse_template
from lipdub.media.audio import load_audio
from lipdub.media.decode import TemplateFrames, pingpong_indices
from lipdub.media.frames import planes
from lipdub.media.probe import probe
from lipdub.render import RenderContext, create_renderer

# Pieces timed by wrapping them where they are looked up (module, attribute). Missing ones are skipped,
# so the script keeps working as the code moves.
PIECES = [
    ("lipdub.pipeline", "crop_bgr"),
    ("lipdub.render.base", "crop_bgr"),
    ("lipdub.render.retrieval", "composite_alpha"),
    ("lipdub.render.retrieval", "composite_alpha_box"),
    ("lipdub.render.retrieval", "piecewise_affine_maps"),
    ("lipdub.render.retrieval", "piecewise_affine_map"),
    ("lipdub.render.retrieval", "piecewise_affine_map_i420"),
    ("lipdub.render.retrieval", "match_colour"),
    ("lipdub.render.retrieval", "match_colour_i420"),
    ("lipdub.render.retrieval", "remap_i420"),
    ("lipdub.render.retrieval", "remap_cubic"),
    ("lipdub.render.retrieval", "remap_sharp"),
    # The torch kernels (--kernels torch: the GPU path's pixel work, here on the CPU): the rest of the
    # render stage is what the render thread would still spend per frame with a GPU doing these.
    ("lipdub.render.retrieval", "warp_and_match"),
    ("lipdub.render.retrieval", "warp_and_match_i420"),
]

# Wall time and CPU time (all threads of this process: OpenCV runs some calls on two threads). On a
# shared machine wall time moves with the neighbours' load; CPU time much less. With 3 pipeline
# threads on 2 cores, CPU time is what the render stage takes from the codec.
totals: dict[str, float] = defaultdict(float)
cpu_totals: dict[str, float] = defaultdict(float)


def timed(name: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t, c = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t
            cpu_totals[name] += time.process_time() - c

    return wrapper


def instrument(renderer) -> None:
    import importlib

    for mod_name, attr in PIECES:
        mod = importlib.import_module(mod_name)
        if hasattr(mod, attr):
            setattr(mod, attr, timed(f"{mod_name.rsplit('.', 1)[-1]}.{attr}", getattr(mod, attr)))
    if hasattr(renderer, "_render_one"):
        renderer._render_one = timed("engine._render_one", renderer._render_one)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=0.2, help="length of the template to build")
    ap.add_argument("--engine", default="retrieval")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--kernels", default=None, choices=["torch"],
                    help="the retrieval engine's pixel work as the GPU path's torch kernels (on the CPU)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lipdub-bench"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    template = build_template(a.minutes, work / f"template_1080p_{a.minutes:g}min.mp4")
    speech = long_speech(max(a.minutes, a.frames / 25 / 60), work / f"speech_{a.minutes:g}min.wav")

    info = probe(template)
    fps = Fraction(info.fps)
    clip = load_audio(speech)
    n_out = a.frames
    mouth = analyse_audio(clip, float(fps), n_out).fit_length(n_out)
    avatar = analyse_template(info, fps, work / "render_cost_cache")
    renderer = create_renderer(a.engine, select_device("cpu"), **({"kernels": a.kernels} if a.kernels else {}))
    indices = pingpong_indices(n_out, avatar.n_frames)
    ctx = RenderContext(avatar=avatar, mouth=mouth, audio=clip, fps=float(fps), template_indices=indices,
                        template=info)
    renderer.prepare(ctx)
    frames = list(TemplateFrames(info, fps, avatar.n_frames).frames_for(indices))
    print(f"{info.width}x{info.height}, {n_out} frames, engine {a.engine}, kernels {a.kernels or 'opencv'}, face box "
          f"{pipeline.face_box(avatar.landmarks[0], info.width, info.height)}", flush=True)
    instrument(renderer)

    render_chunk = timed("render stage (_render_chunk)", pipeline._render_chunk)
    # The encoder thread blends each frame's overlays into its own copy of the frame; timed here on a
    # scratch frame (the copy itself is the encoder's, with or without lipdub).
    scratch = planes(frames[0].copy())
    blend = timed("blend (encoder thread)", lambda out: [o.blend_into(scratch) for o in out])

    def one_pass() -> None:
        for start in range(0, n_out, pipeline.CHUNK):
            out, _ = render_chunk(frames[start : start + pipeline.CHUNK], start, indices, avatar, renderer)
            blend(out)

    one_pass()  # warm-up: first-use costs (allocations, lazy imports) are not per-frame costs
    runs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _ in range(a.repeat):
        totals.clear()
        cpu_totals.clear()
        one_pass()
        for k, v in totals.items():
            runs[k].append((v, cpu_totals[k]))
    print(f"{'ms/frame, median of ' + str(a.repeat):<40} {'wall':>7} {'cpu':>7}   (wall/cpu of each run)")
    for name, vals in runs.items():
        ms = [(1000 * w / n_out, 1000 * c / n_out) for w, c in vals]
        each = ", ".join(f"{w:.2f}/{c:.2f}" for w, c in ms)
        print(f"{name:<40} {statistics.median(w for w, _ in ms):7.2f} {statistics.median(c for _, c in ms):7.2f}"
              f"   ({each})")
    if a.profile:
        prof = cProfile.Profile()
        prof.runcall(one_pass)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
