"""Device choice, precision and CPU fallback: one code path for CPU and CUDA."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass

from lipdub.errors import DeviceError

log = logging.getLogger(__name__)

# A GPU with less free memory than this is treated as busy. Chunks are sized from the free memory measured
# before each one and halved on an out-of-memory error, so this need only cover the least a render
# runs with: one frame's retrieval batch (kernels.batch_bytes_i420: 0.12 GB for a 4K close-up, a
# 2000x1600 source crop and a 1280x960 mask box; bench/gpu_check.py measured 1.0 GiB on the CPU for 16
# of them against an estimate of 1.8), or the Wav2Lip generator's weights with a batch of four (~0.3 GB), plus
# cuDNN/cuBLAS workspaces and an NVENC session (~0.3 GB). 1.5 GB leaves about twice that; below it a
# job would spend its time in batches of one or two next to whatever else holds the GPU.
MIN_FREE_GPU_BYTES = 1_500_000_000
# How long the free-memory query of every GPU (a subprocess) may take before `auto` gives up on GPUs.
GPU_QUERY_TIMEOUT_S = 120.0
# The optional dependency that brings torch: the default engines render on the CPU without it.
TORCH_EXTRA = "lipdub[torch]"


def torch_installed() -> bool:
    """True where torch can be imported; asked without importing it, which takes seconds."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def require_torch(what: str) -> None:
    """Raise a one-line error naming the extra to install when ``what`` needs torch and it is missing."""
    if not torch_installed():
        raise DeviceError(f"{what} needs PyTorch, which is not installed; install it with: "
                          f"pip install '{TORCH_EXTRA}'")


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
        return torch.device(self.spec)

    @property
    def spec(self) -> str:
        """What --device takes to name this device: ``cpu``, ``cuda:1`` or ``mps``."""
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def dtype(self):
        import torch

        return torch.float16 if self.half else torch.float32

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"

    def describe(self) -> str:
        return f"{self.spec} ({self.name})"

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


def select_device(spec: str = "auto", *, min_free_bytes: int = MIN_FREE_GPU_BYTES, announce: bool = True,
                  in_process: bool = True) -> Device:
    """Resolve ``auto|cpu|cuda|cuda:N|mps`` to a usable :class:`Device`.

    ``auto`` and ``cuda`` take the CUDA GPU with the most free memory, if it has enough, else the
    CPU; ``cuda:N`` takes GPU N. Where the GPU asked for is missing, busy or unusable the CPU
    renders instead, with a message that says why, so a job never dies for it.

    ``in_process`` False is for a process that renders nothing itself (the studio's server, a Celery
    worker's supervisor): every GPU is queried from a short-lived subprocess, so this process holds
    no CUDA context (hundreds of MB on each GPU it touched). A rendering process queries its own GPU
    in place and makes it the current device, so everything torch puts on "the current GPU" (pinned
    buffers, the cache, cuDNN handles) goes to that GPU and not to cuda:0.
    """
    spec = (spec or "auto").strip().lower()
    if spec not in ("auto", "cpu", "cuda", "mps") and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise DeviceError(f"Unknown device '{spec}'; use auto, cpu, cuda, cuda:N or mps.")
    if spec not in ("auto", "cpu"):
        require_torch(f"--device {spec}")
    device = _resolve(spec, min_free_bytes, in_process)
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


def _on_cpu(spec: str, reason: str) -> Device:
    """The CPU, with a message naming what was asked for and why it cannot be had."""
    if spec == "auto":
        log.info("No GPU used (%s); rendering on the CPU.", reason)
    else:
        log.warning("%s was requested, but %s; rendering on the CPU.", spec, reason)
    return cpu_device()


def _driver_version() -> str | None:
    """The NVIDIA kernel driver's version (Linux), e.g. "535.104.05"; None where it cannot be read."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            m = re.search(r"Kernel Module(?: for [\w]+)?\s+([\d.]+)", f.read())
    except OSError:
        return None
    return m.group(1) if m else None


def cuda_unavailable_reason(torch) -> str | None:
    """Why torch cannot use CUDA here, in words a user can act on; None when it can."""
    if _nvidia_driver_absent():
        return "no NVIDIA driver is installed (no /dev/nvidia* devices)"
    if torch.version.cuda is None:
        return (f"this torch {torch.__version__} is a CPU-only build; install a CUDA build of torch "
                "(pytorch.org) to render on the GPU")
    with warnings.catch_warnings(record=True) as caught:  # torch says why CUDA failed in a warning
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available and torch.cuda.device_count() > 0:
        return None
    said = " ".join(str(w.message) for w in caught)
    driver = _driver_version()
    too_old = re.search(r"too old \(found version (\d+)\)", said)
    if too_old or "insufficient" in said.lower():
        if too_old:  # CUDA's number: 12020 is CUDA 12.2, the newest the driver supports
            v = int(too_old.group(1))
            found = f"supports CUDA up to {v // 1000}.{v % 1000 // 10}"
        else:
            found = "is too old"
        return (f"the NVIDIA driver{' ' + driver if driver else ''} {found}, older than torch's CUDA "
                f"{torch.version.cuda} build needs; update the driver, or install a torch build for an older CUDA")
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and not hidden.strip(" ,"):
        return "CUDA_VISIBLE_DEVICES is empty, which hides every GPU"
    detail = said.replace("CUDA initialization: ", "").split(". ")[0].strip() if said else "no GPU was found"
    return f"torch (built for CUDA {torch.version.cuda}) cannot use a GPU: {detail}"


def _resolve(spec: str, min_free_bytes: int, in_process: bool) -> Device:
    if spec == "cpu":
        return cpu_device()
    if spec != "mps" and _nvidia_driver_absent():
        return _on_cpu(spec, "no NVIDIA driver is installed (no /dev/nvidia* devices)")
    if not torch_installed():  # only `auto` gets here: a GPU asked for by name is refused above
        return _on_cpu(spec, f"PyTorch is not installed (pip install '{TORCH_EXTRA}' for GPUs)")
    import torch

    if spec == "mps":
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return Device("mps", None, "Apple GPU", half=False)
        return _on_cpu(spec, "MPS is not available here")
    reason = cuda_unavailable_reason(torch)
    if reason is not None:
        return _on_cpu(spec, reason)
    count = torch.cuda.device_count()
    names: dict[int, str] = {}
    if spec.startswith("cuda:"):
        index = int(spec[5:])
        if index >= count:
            have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            return _on_cpu(spec, f"this machine has {count} GPU{'s' if count > 1 else ''} ({have})")
        if in_process:
            free = _free_in_process(torch, index)
        else:
            gpus = gpu_inventory()
            free = gpus[index][0] if index < len(gpus) else None
            names = {i: name for i, (_, name) in enumerate(gpus)}
    elif count == 1 and in_process:
        index, free = 0, _free_in_process(torch, 0)
    else:
        # Several GPUs: each is measured in a subprocess, so this one holds no context on those it
        # does not pick (measuring in place would leave one on every GPU).
        gpus = gpu_inventory()
        usable = [(f, -i) for i, (f, _) in enumerate(gpus) if f is not None]
        if not usable:
            return _on_cpu(spec, "no GPU answered the query of its free memory")
        free, index = max(usable)  # the freest; of equals, the lowest index
        index = -index
        names = {i: name for i, (_, name) in enumerate(gpus)}
    if free is None:
        return _on_cpu(spec, f"GPU cuda:{index} cannot be queried")
    if free < min_free_bytes:
        return _on_cpu(spec, f"GPU cuda:{index} is busy ({free / 1e9:.1f} GB free, {min_free_bytes / 1e9:.1f} "
                             "GB needed)")
    if in_process:
        torch.cuda.set_device(index)
        return Device("cuda", index, torch.cuda.get_device_name(index), half=True)
    return Device("cuda", index, names.get(index) or "NVIDIA GPU", half=True)


def _free_in_process(torch, index: int) -> int | None:
    try:
        return int(torch.cuda.mem_get_info(index)[0])
    except RuntimeError as e:  # the driver's trouble with this GPU: it counts as unusable
        log.warning("GPU cuda:%d cannot be queried (%s).", index, str(e).splitlines()[0])
        return None


_GPU_QUERY = """
import json, torch
gpus = []
for i in range(torch.cuda.device_count()):
    try:
        gpus.append([int(torch.cuda.mem_get_info(i)[0]), torch.cuda.get_device_name(i)])
    except RuntimeError:
        gpus.append([None, ""])
print(json.dumps(gpus))
"""


def gpu_inventory() -> list[tuple[int | None, str]]:
    """(free bytes, name) of every CUDA GPU (free None: it did not answer), asked in a subprocess whose
    CUDA contexts end with it; empty when the query itself fails."""
    try:
        done = subprocess.run([sys.executable, "-c", _GPU_QUERY], capture_output=True, text=True,
                              timeout=GPU_QUERY_TIMEOUT_S, check=True)
        gpus = json.loads(done.stdout.strip().splitlines()[-1])
        return [(None if free is None else int(free), str(name)) for free, name in gpus]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError, TypeError) as e:
        log.warning("Could not measure the GPUs' free memory (%s).", e)
        return []


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
    """True for a CUDA out-of-memory error: smaller batches may still fit."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


# How CUDA's own failures begin (torch raises them as RuntimeError before torch.AcceleratorError existed).
_CUDA_FAILURES = ("CUDA error", "CUDA driver error", "cuDNN error", "CUDNN_STATUS_", "CUBLAS_STATUS_",
                  "cuFFT error", "NVRTC error", "CUDA call failed")


def is_cuda_error(error: BaseException) -> bool:
    """True for a failure of the GPU or its driver (out of memory included), after which the CPU may
    carry on; False for everything else, bugs included, which must surface as they are."""
    import torch

    if is_out_of_memory(error):
        return True
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    if not isinstance(error, RuntimeError):
        return False
    text = str(error)
    return text.startswith(_CUDA_FAILURES) or any(f"{m}:" in text for m in ("CUDA error", "cuDNN error"))


def release_cached_memory(device: Device) -> None:
    """Hand the blocks torch's allocator keeps cached on ``device`` back to the driver (after an
    out-of-memory error, so a smaller retry is measured against what is really free)."""
    if device.kind != "cuda":
        return
    import torch

    if not torch.cuda.is_initialized():  # nothing was ever allocated
        return
    with torch.cuda.device(device.index or 0):
        torch.cuda.empty_cache()


def gpu_available_bytes(device: Device) -> int:
    """Bytes a batch can still take on ``device``: the driver's free memory plus what torch's allocator
    holds cached but unused (it reuses that before asking the driver)."""
    import torch

    index = device.index or 0
    free = int(torch.cuda.mem_get_info(index)[0])
    return free + int(torch.cuda.memory_reserved(index)) - int(torch.cuda.memory_allocated(index))
