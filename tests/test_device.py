"""Device choice: CPU fallback with a warning, and no torch import where no NVIDIA driver can exist."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from lipdub.device import _nvidia_driver_absent, select_device
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
    assert "falling back to the CPU" in caplog.text


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
