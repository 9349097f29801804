"""`lipdub info`: device, codecs, versions and the models found."""

from __future__ import annotations

import logging
import platform

import typer

from lipdub.logs import setup_logging

log = logging.getLogger("lipdub")


def register(app: typer.Typer) -> None:
    @app.command()
    def info(device: str = typer.Option("auto", help="Device to check: auto, cpu, cuda, cuda:N or mps.")) -> None:
        """Show the device, codecs, library versions and the models found."""
        setup_logging()
        import av
        import cv2
        import mediapipe
        import numpy
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        import lipdub
        from lipdub.device import (
            TORCH_EXTRA,
            _driver_version,
            cuda_unavailable_reason,
            select_device,
            torch_installed,
        )
        from lipdub.media.encode import nvenc_opens
        from lipdub.render import ENGINES, TORCH_ENGINES

        dev = select_device(device)
        table = Table(title=f"lipdub {lipdub.__version__}", show_header=False)
        table.add_row("device", dev.describe() + (" (FP16)" if dev.half else " (FP32)"))
        driver = _driver_version()
        if torch_installed():
            import torch

            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            usable = cuda_unavailable_reason(torch) or f"{torch.cuda.device_count()} GPU(s) usable"
            table.add_row("CUDA", f"torch {build}; NVIDIA driver {driver or 'not found'}; {usable}")
        else:
            # escape: rich would read "[torch]" as markup and drop it
            table.add_row("CUDA", escape(f"not available: PyTorch is not installed (needed for GPUs and the wav2lip "
                                         f"engine: pip install '{TORCH_EXTRA}'); NVIDIA driver "
                                         f"{driver or 'not found'}"))
        table.add_row("python", platform.python_version())
        for name, mod in (("av (FFmpeg)", av), ("opencv", cv2), ("mediapipe", mediapipe), ("numpy", numpy)):
            table.add_row(name, getattr(mod, "__version__", "?"))
        table.add_row("torch", torch.__version__ if torch_installed() else "not installed")
        table.add_row("encoders", "libx264, aac")
        opens, reason = nvenc_opens(dev.index if dev.kind == "cuda" else None)
        # Tried, not just looked up: compiled in is not enough (no driver, or a GPU without NVENC).
        table.add_row("NVENC", f"h264_nvenc {reason}" if opens else f"h264_nvenc does not open: {reason}")
        table.add_row("engines", ", ".join(name + ("" if torch_installed() or name not in TORCH_ENGINES
                                                     else " (needs torch)") for name in ENGINES))
        for label, ok in _models():
            table.add_row(label, ok)
        Console().print(table)


def _models() -> list[tuple[str, str]]:
    import os

    rows = []
    import mediapipe

    mesh = os.path.join(os.path.dirname(mediapipe.__file__), "modules", "face_landmark",
                        "face_landmark_front_cpu.binarypb")
    rows.append(("face mesh model", "bundled with mediapipe" if os.path.exists(mesh) else "MISSING"))
    try:
        import pocketsphinx

        rows.append(("speech model", f"pocketsphinx en-us ({pocketsphinx.get_model_path()})"))
    except Exception as e:  # noqa: BLE001 - report, don't fail, in a diagnostic command
        rows.append(("speech model", f"MISSING ({e})"))
    return rows
