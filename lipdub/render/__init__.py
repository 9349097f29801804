"""Mouth synthesis engines behind one :class:`~lipdub.render.base.Renderer` interface."""

from __future__ import annotations

import importlib

from lipdub.device import Device, require_torch
from lipdub.errors import LipdubError
from lipdub.face.avatar import Avatar
from lipdub.render.base import FrameTask, RenderContext, RenderedCrop, Renderer

__all__ = ["ENGINES", "FrameTask", "RenderContext", "RenderedCrop", "Renderer", "create_renderer", "engine_for"]

# name -> "module:Class"; imported on demand so optional engines cost nothing until used.
ENGINES: dict[str, str] = {
    "retrieval": "lipdub.render.retrieval:RetrievalRenderer",
    "warp": "lipdub.render.warp:WarpRenderer",
    "wav2lip": "lipdub.render.wav2lip.engine:Wav2LipRenderer",
}

# Engines that run a torch model: asking for one without torch installed fails at once, before any analysis.
TORCH_ENGINES = {"wav2lip"}

# Order in which `--engine auto` tries engines; the first whose suits(avatar) is true wins.
AUTO_ORDER = ["retrieval", "warp"]


def engine_class(name: str) -> type[Renderer]:
    try:
        target = ENGINES[name]
    except KeyError:
        raise LipdubError(f"Unknown engine '{name}'; use auto or one of: {', '.join(ENGINES)}.") from None
    if name in TORCH_ENGINES:
        require_torch(f"The {name} engine")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def engine_for(name: str, avatar: Avatar) -> str:
    """Resolve ``auto`` to a concrete engine for this template."""
    if name != "auto":
        engine_class(name)
        return name
    for candidate in AUTO_ORDER:
        if engine_class(candidate).suits(avatar):
            return candidate
    return AUTO_ORDER[-1]


def create_renderer(name: str, device: Device, **options) -> Renderer:
    return engine_class(name)(device, **options)
