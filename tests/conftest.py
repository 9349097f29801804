"""Shared fixtures: the real test media in ../shared/media."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MEDIA = ROOT.parent / "shared" / "media"


@pytest.fixture(scope="session")
def shared_media() -> Path:
    if not (SHARED_MEDIA / "en_radio_8s.wav").exists():
        pytest.skip(f"test media not found at {SHARED_MEDIA} (the repository's sibling folder ../shared)")
    return SHARED_MEDIA
