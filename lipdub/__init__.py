"""lipdub: make the person in a video or photo speak a recording.

The library call is :func:`lipdub.generate`; the CLI is ``lipdub``; the studio is ``python app.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["generate", "Result", "__version__"]

if TYPE_CHECKING:
    from lipdub.pipeline import Result, generate


def __getattr__(name: str) -> Any:
    # Lazy so that `import lipdub` stays cheap (torch and mediapipe load only when rendering).
    if name in ("generate", "Result"):
        from lipdub import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
