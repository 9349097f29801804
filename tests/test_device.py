"""Device choice: CPU fallback with a message naming the cause, no torch import where no NVIDIA driver can
exist, several GPUs (torch.cuda mocked: no test needs a GPU)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import lipdub.device as device_mod
from lipdub.device import Device, _nvidia_driver_absent, is_cuda_error, select_device
from lipdub.errors import DeviceError


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def test_cuda_request_without_gpu_falls_back_to_cpu(caplog: pytest.LogCaptureFixture) -> None:
    if _has_gpu():
        pytest.skip("this machine has a GPU")
    with caplog.at_level(logging.WARNING, logger="lipdub.device"):
        device = select_device("cuda", announce=False)
    assert device.kind == "cpu" and not device.half
    assert "cuda was requested" in caplog.text and "rendering on the CPU" in caplog.text


def test_auto_on_a_machine_without_nvidia_driver_does_not_import_torch() -> None:
    if not _nvidia_driver_absent():
        pytest.skip("an NVIDIA driver is present: auto must ask torch")
    code = ("import sys; from lipdub.device import select_device; d = select_device('auto', announce=False); "
            "print(d.kind, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["cpu", "False"]


def test_unknown_device_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="Unknown device 'tpu'"):
        select_device("tpu")


class FakeCuda:
    """torch.cuda of a machine with ``frees`` free bytes on each GPU, recording what touches a GPU."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, frees: list[int], *, cuda: str | None = "12.4",
                 warning: str | None = None) -> None:
        import warnings

        import torch

        self.frees, self.queried, self.current = frees, [], None
        monkeypatch.setattr(device_mod, "_nvidia_driver_absent", lambda: False)
        monkeypatch.setattr(torch.version, "cuda", cuda)

        def is_available() -> bool:
            if warning:
                warnings.warn(warning, UserWarning, stacklevel=1)
            return warning is None and bool(frees)

        monkeypatch.setattr(torch.cuda, "is_available", is_available)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(frees) if warning is None else 0)
        monkeypatch.setattr(torch.cuda, "mem_get_info", self.mem_get_info)
        monkeypatch.setattr(torch.cuda, "get_device_name", self.get_device_name)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        # The subprocess query, as it would answer on this machine.
        monkeypatch.setattr(device_mod, "gpu_inventory", lambda: [(f, f"Fake H100 #{i}") for i, f in enumerate(frees)])

    def mem_get_info(self, index: int) -> tuple[int, int]:
        self.queried.append(index)  # in this process: a CUDA context on that GPU
        return self.frees[index], 80 << 30

    def set_device(self, index: int) -> None:
        self.current = index

    def get_device_name(self, index: int) -> str:
        self.queried.append(index)  # it may initialise CUDA in this process: only for the GPU it renders on
        return f"Fake H100 #{index}"


def test_auto_takes_the_freest_gpu_and_leaves_no_context_on_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(monkeypatch, [2 << 30, 40 << 30, 9 << 30])
    device = select_device("auto", announce=False)
    assert (device.kind, device.index, device.half) == ("cuda", 1, True)
    assert device.describe() == "cuda:1 (Fake H100 #1)"  # the index is in the name
    assert cuda.queried == [1]  # measured in a subprocess; only the GPU it renders on touched here
    assert cuda.current == 1  # pinned buffers and the cache go to the chosen GPU, not cuda:0


def test_cuda_n_is_the_gpu_used_and_the_only_one_queried(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(monkeypatch, [40 << 30, 2 << 30, 9 << 30])
    device = select_device("cuda:2", announce=False)
    assert device.spec == "cuda:2" and device.torch.index == 2
    assert cuda.queried == [2, 2] and cuda.current == 2


def test_a_process_that_renders_nothing_queries_in_a_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(monkeypatch, [9 << 30])
    assert select_device("cuda:0", announce=False, in_process=False).describe() == "cuda:0 (Fake H100 #0)"
    assert select_device("auto", announce=False, in_process=False).spec == "cuda:0"
    assert cuda.queried == [] and cuda.current is None


def test_a_missing_gpu_index_falls_back_to_the_cpu_with_a_message(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    FakeCuda(monkeypatch, [9 << 30, 9 << 30])
    with caplog.at_level(logging.WARNING, logger="lipdub.device"):
        device = select_device("cuda:3", announce=False)
    assert device.kind == "cpu"
    assert "cuda:3 was requested" in caplog.text and "2 GPUs (cuda:0 to cuda:1)" in caplog.text


def test_a_busy_gpu_is_named_with_its_free_memory(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    FakeCuda(monkeypatch, [9 << 30, 1 << 28])
    with caplog.at_level(logging.WARNING, logger="lipdub.device"):
        assert select_device("cuda:1", announce=False).kind == "cpu"
    assert "GPU cuda:1 is busy (0.3 GB free" in caplog.text


@pytest.mark.parametrize("cause", ["no driver", "cpu-only torch", "driver too old", "no gpu visible"])
def test_each_reason_for_no_gpu_has_its_own_message(cause: str, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    if cause == "no driver":
        FakeCuda(monkeypatch, [9 << 30])
        monkeypatch.setattr(device_mod, "_nvidia_driver_absent", lambda: True)
        expected = ["no NVIDIA driver is installed"]
    elif cause == "cpu-only torch":
        FakeCuda(monkeypatch, [9 << 30], cuda=None)
        expected = ["CPU-only build", "install a CUDA build of torch"]
    elif cause == "driver too old":
        FakeCuda(monkeypatch, [9 << 30], warning="CUDA initialization: The NVIDIA driver on your system is too old "
                 "(found version 11040). Please update your GPU driver by downloading and installing a new version")
        monkeypatch.setattr(device_mod, "_driver_version", lambda: "470.256.02")
        expected = ["driver 470.256.02 supports CUDA up to 11.4", "torch's CUDA 12.4 build", "update the driver"]
    else:
        FakeCuda(monkeypatch, [])
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        expected = ["CUDA_VISIBLE_DEVICES is empty"]
    with caplog.at_level(logging.INFO, logger="lipdub.device"):
        assert select_device("cuda:1", announce=False).kind == "cpu"
        assert select_device("auto", announce=False).kind == "cpu"
    warning, hint = caplog.records[0], caplog.records[1]
    assert warning.levelno == logging.WARNING and warning.getMessage().startswith("cuda:1 was requested, but ")
    assert hint.levelno == logging.INFO  # auto says why it took the CPU, without alarm
    for words in expected:
        assert words in warning.getMessage() and words in hint.getMessage()


def test_only_the_gpus_own_failures_count_as_cuda_errors() -> None:
    import torch

    assert is_cuda_error(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_cuda_error(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_cuda_error(torch.AcceleratorError("CUDA error: unspecified launch failure"))
    assert is_cuda_error(RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"))
    assert not is_cuda_error(RuntimeError("Expected all tensors to be on the same device"))
    assert not is_cuda_error(RuntimeError("shape '[2, 3]' is invalid for input of size 7"))
    assert not is_cuda_error(ValueError("CUDA error: not a RuntimeError"))
    assert Device("cpu", None, "2 cores", False).describe() == "cpu (2 cores)"
