"""Device choice, precision and CPU fallback: one code path for CPU and CUDA."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from lipdub.errors import DeviceError

log = logging.getLogger(__name__)

# A GPU with less free memory than this is treated as busy.
MIN_FREE_GPU_BYTES = 1_500_000_000


@dataclass(frozen=True)
class Device:
    """Where tensors live and in which precision they are computed."""

    kind: str  # "cpu", "cuda" or "mps"
    index: int | None
    name: str  # human name: "NVIDIA GeForce RTX 3090" or "2 cores"
    half: bool  # FP16 autocast (CUDA only)

    @property
    def torch(self):  # -> torch.device; torch imported lazily to keep `import lipdub` light
        import torch

        _size_torch_threads()
        return torch.device(self.kind if self.index is None else f"{self.kind}:{self.index}")

    @property
    def dtype(self):
        import torch

        return torch.float16 if self.half else torch.float32

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"

    def describe(self) -> str:
        return f"{self.kind} ({self.name})"

    def autocast(self):
        """Context manager: FP16 autocast on CUDA, nothing on CPU."""
        import contextlib

        import torch

        if self.kind == "cuda" and self.half:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def cpu_device() -> Device:
    return Device("cpu", None, f"{cpu_count()} cores", half=False)


def select_device(spec: str = "auto", *, min_free_bytes: int = MIN_FREE_GPU_BYTES, announce: bool = True) -> Device:
    """Resolve ``auto|cpu|cuda|cuda:N|mps`` to a usable :class:`Device`.

    ``auto`` takes a CUDA GPU with enough free memory, else the CPU. An explicit ``cuda`` falls back
    to the CPU with a warning when no GPU is present or it is busy, so a job never dies for it.
    """
    spec = (spec or "auto").strip().lower()
    if spec not in ("auto", "cpu", "cuda", "mps") and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise DeviceError(f"Unknown device '{spec}'; use auto, cpu, cuda, cuda:N or mps.")
    device = _resolve(spec, min_free_bytes)
    configure_threads(device)
    if announce:
        log.info("Using device: %s", device.describe())
    return device


def _nvidia_driver_absent() -> bool:
    """True where no NVIDIA driver can exist (Linux without its device nodes): torch, whose import
    alone takes seconds, need not be asked."""
    if not sys.platform.startswith("linux"):
        return False
    nodes = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")  # dxg: WSL2
    return not any(os.path.exists(p) for p in nodes)


def _resolve(spec: str, min_free_bytes: int) -> Device:
    if spec == "cpu":
        return cpu_device()
    if spec != "mps" and _nvidia_driver_absent():
        if spec != "auto":
            log.warning("CUDA was requested but no usable NVIDIA GPU was found; falling back to the CPU.")
        return cpu_device()
    import torch

    if spec == "mps":
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return Device("mps", None, "Apple GPU", half=False)
        log.warning("MPS is not available here; falling back to the CPU.")
        return cpu_device()
    if not torch.cuda.is_available():
        if spec != "auto":
            log.warning("CUDA was requested but no usable NVIDIA GPU was found; falling back to the CPU.")
        return cpu_device()
    index = int(spec[5:]) if spec.startswith("cuda:") else _freest_gpu()
    if index >= torch.cuda.device_count():
        raise DeviceError(f"There is no GPU cuda:{index}; this machine has {torch.cuda.device_count()}.")
    try:
        free, _total = torch.cuda.mem_get_info(index)
    except RuntimeError as e:  # driver trouble counts as "not usable"
        log.warning("GPU cuda:%d cannot be queried (%s); falling back to the CPU.", index, e)
        return cpu_device()
    if free < min_free_bytes:
        log.warning("GPU cuda:%d is busy (%.1f GB free); falling back to the CPU.", index, free / 1e9)
        return cpu_device()
    return Device("cuda", index, torch.cuda.get_device_name(index), half=True)


def _freest_gpu() -> int:
    import torch

    best, best_free = 0, -1
    for i in range(torch.cuda.device_count()):
        try:
            free = torch.cuda.mem_get_info(i)[0]
        except RuntimeError:
            continue
        if free > best_free:
            best, best_free = i, free
    return best


def configure_threads(device: Device) -> None:
    """Size torch's and OpenCV's thread pools from the core count (they otherwise oversubscribe)."""
    import cv2

    cv2.setNumThreads(cpu_count())
    if "torch" in sys.modules:  # else sized when first used (Device.torch)
        _size_torch_threads()


_torch_sized = False


def _size_torch_threads() -> None:
    global _torch_sized
    if not _torch_sized:
        import torch

        torch.set_num_threads(cpu_count())
        _torch_sized = True


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA out-of-memory error, after which work should retry on the CPU."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
