"""One command for the first machine with a GPU: is lipdub's CUDA path right, and is it faster?

    python bench/gpu_check.py [--device cuda:0] [--weights wav2lip.pth] [--seconds 4] [--hd] [--skip-generate]

Prints one table:
1. versions: driver, torch and its CUDA build, cuDNN, FFmpeg; the GPU, or why there is none;
2. the retrieval kernels (I420, as the GPU renders) against the float32 CPU reference, on sources 512,
   1920 and 3840 px wide (PSNR over the mask's luma only, and the largest difference): on the GPU itself
   where there is one, and always the GPU's precision policy computed on the CPU, next to the old
   FP16-grid policy;
3. device memory of one 16-frame chunk at 1080p and 4K close-ups: the estimate the batches are sized
   with (kernels.batch_bytes_i420), the CPU's peak growth for the same chunk, and the GPU's measured peak;
4. Wav2Lip FP16 (autocast, as rendered on CUDA) against FP32, when --weights is given and there is a GPU;
5. the encoder a render on this device gets, and FFmpeg's reason when NVENC does not open;
6. ``generate`` on the CPU and on the GPU: wall time, frames per second, real-time factor, the devices
   that rendered and the encoder (the analysis is cached first, so both time the render itself).

Without a GPU the CPU halves run and the GPU rows say n/a, so CI and a dry run exercise the script.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from _common import media

from lipdub.device import Device, _driver_version, cpu_device, cuda_unavailable_reason, select_device

WIDTHS = (512, 1920, 3840)
CHUNK = 16
# (source crop, mask box) of a close-up: the lower face at 1080p, and the same face at 4K.
CLOSE_UPS = {"1080p": ((1000, 800), (640, 480)), "4K": ((2000, 1600), (1280, 960))}


def row(label: str, value: str) -> None:
    print(f"{label:<34} {value}", flush=True)


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


# -- 1. versions ----------------------------------------------------------------------------------


def versions(device: Device) -> None:
    import torch

    section("versions")
    row("python", platform.python_version())
    row("torch", f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none'}; cuDNN: "
                 f"{torch.backends.cudnn.version() if torch.version.cuda else 'none'})")
    row("NVIDIA driver", _driver_version() or "not found")
    row("av / FFmpeg", f"{av.__version__} / libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}")
    if device.kind == "cuda":
        props = torch.cuda.get_device_properties(device.index)
        row("GPU", f"{device.describe()}, {props.total_memory / 2**30:.1f} GiB, "
                   f"compute {props.major}.{props.minor}, {torch.cuda.device_count()} visible")
    else:
        row("GPU", f"none used: {cuda_unavailable_reason(torch) or 'not requested'}")


# -- 2. kernels against the float32 CPU reference -------------------------------------------------


def _frame() -> np.ndarray:
    with av.open(str(media("katie_talk_512.mp4"))) as c:
        return next(c.decode(video=0)).to_ndarray(format="bgr24")


def wide_job(frame: np.ndarray, width: int, box: tuple[int, int] = (300, 240)):
    """A real frame tiled to ``width`` px (its own sharpness), the last tile's mouth area resampled through a
    slight rotation and zoom, as a retrieval plan does; and the blend's mask over the box (an ellipse)."""
    from lipdub.render.kernels import WarpJob

    reps = -(-width // frame.shape[1])
    src = np.ascontiguousarray(np.tile(frame, (1, reps, 1))[:, :width])
    w, h = box
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, scale = 0.07, 1.04
    cx, cy = width - frame.shape[1] + 180.3, 300.7
    map_x = (np.cos(angle) * (xx - w / 2) - np.sin(angle) * (yy - h / 2)) * scale + cx
    map_y = (np.sin(angle) * (xx - w / 2) + np.cos(angle) * (yy - h / 2)) * scale + cy
    y0, x0 = int(cy) - h // 2, int(cx) - w // 2
    target = np.clip(src[y0:y0 + h, x0:x0 + w].astype(np.float32) * 0.95 + 8, 0, 255).astype(np.uint8)
    ring = np.zeros((h, w), bool)
    ring[: h // 3] = True
    mask = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2 < 1
    return WarpJob(src, map_x.astype(np.float32), map_y.astype(np.float32), target, ring), mask


def psnr_where(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> str:
    d = a.astype(np.float64)[mask] - b.astype(np.float64)[mask]
    mse = float(np.mean(d**2))
    psnr = 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)
    return f"{psnr:5.1f} dB, max {int(np.abs(d).max()):3d}"


def i420(bgr: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2YUV_I420)


def kernels(device: Device) -> None:
    import torch

    from lipdub.render.kernels import Precision, WarpJobI420, precision_for, warp_and_match_i420

    section("retrieval kernels (I420, as rendered) vs the float32 CPU reference: PSNR over the mask's luma, "
            "largest difference in levels")
    cpu = cpu_device()
    gpu_policy = precision_for(Device("cuda", 0, "policy", half=True))
    old_policy = Precision(torch.float16, torch.float16)
    frame = _frame()
    for width in WIDTHS:
        job, mask = wide_job(frame, width)
        job = WarpJobI420(i420(job.source), job.map_x, job.map_y, i420(job.target), job.ring)
        luma = np.zeros((mask.shape[0] * 3 // 2, mask.shape[1]), bool)
        luma[: mask.shape[0]] = mask
        reference = warp_and_match_i420(cpu, [job])[0]

        def versus(dev: Device, precision=None) -> str:
            return psnr_where(warp_and_match_i420(dev, [job], precision)[0], reference, luma)  # noqa: B023

        cells = [f"{device.spec} {versus(device)}" if device.kind == "cuda" else "GPU n/a",
                 f"GPU policy on CPU {versus(cpu, gpu_policy)}", f"old FP16 grid {versus(cpu, old_policy)}"]
        row(f"{width} px wide", " | ".join(cells))


# -- 3. memory of one chunk -----------------------------------------------------------------------


def _chunk_jobs(size: str):
    from lipdub.render.kernels import WarpJobI420

    (sw, sh), (bw, bh) = CLOSE_UPS[size]
    frame = _frame()
    reps_x, reps_y = -(-sw // frame.shape[1]), -(-sh // frame.shape[0])
    src = i420(np.tile(frame, (reps_y, reps_x, 1))[:sh, :sw])
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
    ox, oy = (sw - bw) // 2 * 2, (sh - bh) // 2 * 2
    target = i420(np.tile(frame, (reps_y, reps_x, 1))[oy:oy + bh, ox:ox + bw])
    ring = np.zeros((bh, bw), bool)
    ring[: bh // 3 : 2] = True
    return [WarpJobI420(src, xx + ox + 0.3 * k, yy + oy, target, ring) for k in range(CHUNK)]


def _cpu_chunk_peak(size: str) -> int:
    """Peak RSS growth (bytes) of one chunk's kernels on the CPU, measured in a fresh process."""
    code = ("import resource, sys; sys.path.insert(0, 'bench'); import gpu_check as g; "
            "from lipdub.device import cpu_device; from lipdub.render.kernels import warp_and_match_i420; "
            f"jobs = g._chunk_jobs({size!r}); import torch; "
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; warp_and_match_i420(cpu_device(), jobs); "
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return int(out.stdout.strip().splitlines()[-1])


def memory(device: Device) -> None:
    from lipdub.render.kernels import batch_bytes_i420, warp_and_match_i420

    section(f"memory of one {CHUNK}-frame chunk (close-up: source crop, mask box)")
    for size, ((sw, sh), (bw, bh)) in CLOSE_UPS.items():
        jobs = _chunk_jobs(size)
        cells = [f"estimate {batch_bytes_i420(jobs) / 2**30:5.2f} GiB",
                 f"CPU peak growth {_cpu_chunk_peak(size) / 2**30:5.2f} GiB"]
        if device.kind == "cuda":
            import torch

            torch.cuda.synchronize(device.index)
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device.index)
            torch.cuda.reset_peak_memory_stats(device.index)
            warp_and_match_i420(device, jobs)
            torch.cuda.synchronize(device.index)
            peak = torch.cuda.max_memory_allocated(device.index) - base
            cells.append(f"GPU peak {peak / 2**30:5.2f} GiB")
        else:
            cells.append("GPU n/a")
        row(f"{size} ({sw}x{sh}, {bw}x{bh})", " | ".join(cells))


# -- 4. Wav2Lip FP16 against FP32 -----------------------------------------------------------------


def wav2lip(device: Device, weights: str | None) -> None:
    section("Wav2Lip FP16 (autocast) vs FP32")
    if not weights:
        row("Wav2Lip", "n/a (pass --weights wav2lip.pth)")
        return
    if device.kind != "cuda":
        row("Wav2Lip", "n/a (no GPU: the CPU renders in FP32 only)")
        return
    import cv2
    import torch

    from lipdub.render.wav2lip.checkpoint import load_wav2lip

    face = cv2.resize(cv2.imread(str(media("portrait_474.png"))), (96, 96), interpolation=cv2.INTER_AREA)
    faces = np.stack([np.roll(face, k, axis=1) for k in range(16)])
    masked = faces.copy()
    masked[:, 48:] = 0
    x = np.concatenate([masked, faces], axis=3).astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    mels = rng.normal(-2, 1.5, (16, 1, 80, 16)).astype(np.float32)
    model = load_wav2lip(weights, device.torch)
    face_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device.torch)
    mel_t = torch.from_numpy(mels).to(device.torch)
    with torch.inference_mode():
        fp32 = model(mel_t, face_t).float().clamp(0, 1).mul(255).round()
        with torch.autocast("cuda", dtype=torch.float16):
            fp16 = model(mel_t, face_t).float().clamp(0, 1).mul(255).round()
    diff = (fp16 - fp32).abs()
    row("Wav2Lip 16 faces", f"max {int(diff.max())} levels, mean {float(diff.mean()):.3f}")


# -- 5. encoder -----------------------------------------------------------------------------------


def encoder(device: Device) -> None:
    from lipdub.media.encode import nvenc_opens

    section("encoder")
    if device.kind != "cuda":
        row("encoder chosen", "libx264 (NVENC is only tried on a CUDA device)")
    opens, reason = nvenc_opens(device.index if device.kind == "cuda" else None)
    if device.kind == "cuda":
        row("encoder chosen", "h264_nvenc" if opens else f"libx264 (NVENC does not open: {reason})")
    else:
        row("NVENC", reason if opens else f"does not open: {reason}")


# -- 6. generate on the CPU and on the GPU --------------------------------------------------------


def _generate(spec: str, audio: Path, face: Path, out: Path, cache: Path) -> dict:
    """One render in a fresh process (one device each, as a worker has): its Result, and its wall time."""
    code = ("import json, sys, time, logging; logging.basicConfig(level=logging.WARNING); "
            "from lipdub.pipeline import generate; t = time.monotonic(); "
            f"r = generate({str(audio)!r}, {str(face)!r}, {str(out)!r}, device={spec!r}, cache_dir={str(cache)!r}); "
            "print(json.dumps({'wall': time.monotonic() - t, 'frames': r.frames, 'duration': r.duration, "
            "'device': r.device, 'encoder': r.encoder, 'engine': r.engine}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cut_audio(src: Path, out: Path, seconds: float) -> Path:
    """The first ``seconds`` of real speech (16 kHz mono wav)."""
    import soundfile as sf

    from lipdub.media.audio import load_audio

    clip = load_audio(src)
    sf.write(out, clip.samples[: int(seconds * clip.sample_rate)], clip.sample_rate, subtype="PCM_16")
    return out


def generate(device: Device, seconds: float, hd: bool) -> None:
    what = "a 1080p25 template (bench/speed.py's)" if hd else "katie_talk_512.mp4"
    section(f"generate: {seconds:g} s of speech on {what} (analysis cached first)")
    with tempfile.TemporaryDirectory(prefix="lipdub-gpu-check-") as tmp:
        tmp_path = Path(tmp)
        audio = cut_audio(media("en_speech_60s.wav"), tmp_path / "speech.wav", seconds)
        if hd:
            from speed import build_template

            face = build_template(seconds / 60, tmp_path / "template_1080p.mp4")
        else:
            face = media("katie_talk_512.mp4")
        cache = tmp_path / "cache"
        warm = _generate("cpu", audio, face, tmp_path / "warm.mp4", cache)  # fills the analysis cache
        if "error" in warm:
            row("generate", f"failed: {warm['error']}")
            return
        runs = [("cpu", "cpu")] + ([(device.spec, device.spec)] if device.kind == "cuda" else [])
        for label, spec in runs:
            r = _generate(spec, audio, face, tmp_path / f"{label.replace(':', '')}.mp4", cache)
            if "error" in r:
                row(f"generate on {label}", f"failed: {r['error']}")
                continue
            row(f"generate on {label}", f"{r['wall']:6.1f} s  {r['frames'] / r['wall']:6.1f} fps  "
                                        f"{r['duration'] / r['wall']:5.2f}x real time  {r['engine']} on "
                                        f"{r['device']}, {r['encoder']}")
        if device.kind != "cuda":
            row("generate on cuda", "n/a (no GPU)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="the GPU to check: auto, cuda or cuda:N")
    ap.add_argument("--weights", default=None, help="a Wav2Lip checkpoint, for the FP16 against FP32 row")
    ap.add_argument("--seconds", type=float, default=4.0, help="speech length of the generate runs (up to 60)")
    ap.add_argument("--hd", action="store_true", help="generate on a 1080p25 template (the 10x real-time target's "
                    "size) instead of the 512 px clip")
    ap.add_argument("--skip-generate", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="[%(levelname)s] %(message)s")
    started = time.monotonic()
    device = select_device(a.device, announce=False)
    print(f"lipdub GPU check on {platform.node()}: {os.cpu_count()} cores; device {device.describe()}", flush=True)
    versions(device)
    kernels(device)
    memory(device)
    wav2lip(device, a.weights)
    encoder(device)
    if not a.skip_generate:
        generate(device, min(a.seconds, 60.0), a.hd)
    print(f"\n(done in {time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
