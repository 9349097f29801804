"""The avatar cache on disk: what it holds, when each avatar was last used, and pruning to a budget.

A 1080p template's mouth bank takes about 1 GB per minute of video, and a server keeps an avatar for
every template its users upload, so without a budget the cache would grow until the disk is full.
Pruning removes the avatars used longest ago; one used within the last hour may belong to a job that
is still running and is never removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lipdub.errors import InputError

log = logging.getLogger(__name__)

MAX_GB_ENV = "LIPDUB_CACHE_MAX_GB"
DEFAULT_MAX_GB = 20.0
USED_MARK = "last_used"  # an empty file; its modification time is the avatar's last use
# A job marks its avatar when its analysis starts and opens the mouth bank before it renders (an open
# file stays readable after removal), so this only needs to outlast a long template's analysis.
IN_USE_S = 3600.0
GB = 2**30  # binary gigabytes, as the studio shows sizes
# A mouth bank being written (lipdub/render/bank.py) lives in a hidden folder of the cache's avatars folder
# until it is complete; it is no avatar yet, but its bytes are on the disk all the same.
BANK_IN_PROGRESS_PREFIX = ".mouth_bank-"


@dataclass
class CachedAvatar:
    folder: Path
    bytes: int
    last_used: float  # seconds since the epoch
    source: str = ""  # the template's file name when it was analysed, if known


def avatars_root(cache_root: Path) -> Path:
    return cache_root / "avatars"


def budget_bytes() -> int:
    """The cache's size budget from ``$LIPDUB_CACHE_MAX_GB`` (default 20 GB); 0 means no limit."""
    raw = os.environ.get(MAX_GB_ENV, "").strip()
    if not raw:
        return int(DEFAULT_MAX_GB * GB)
    try:
        gb = float(raw)
    except ValueError:
        gb = -1.0
    if not gb >= 0 or gb == float("inf"):
        raise InputError(f"{MAX_GB_ENV} must be a number of gigabytes (0 for no limit), not {raw!r}.")
    return int(gb * GB)


def mark_used(folder: Path) -> None:
    """Record that an avatar is being used now (it becomes the last one pruning would remove); an avatar
    not on disk yet is marked when it is saved."""
    if not folder.is_dir():
        return
    mark = folder / USED_MARK
    try:
        mark.touch()
        os.utime(mark)  # touch() leaves the time alone on some filesystems when the file exists
    except OSError as e:  # a read-only cache still works; it just cannot be pruned by age
        log.debug("Could not mark %s as used: %s", folder, e)


def cached_avatars(root: Path) -> list[CachedAvatar]:
    """Every avatar folder under ``root`` (the cache's ``avatars`` folder), least recently used first.

    Unfinished mouth banks (hidden folders) belong to running jobs and are not listed."""
    found = []
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    for folder in folders:
        size, newest = _tree_size(folder)
        found.append(CachedAvatar(folder, size, _last_used(folder, newest), _source(folder)))
    return sorted(found, key=lambda a: a.last_used)


def _last_used(folder: Path, newest_file: float) -> float:
    try:
        return (folder / USED_MARK).stat().st_mtime
    except OSError:
        pass
    # Unmarked: written before avatars were marked, or being created right now. Its newest file, or
    # the folder itself (a folder made a moment ago, still empty, must not look ancient).
    try:
        return max(newest_file, folder.stat().st_mtime)
    except OSError:
        return newest_file


def banks_in_progress_bytes(root: Path) -> int:
    """Bytes of the mouth banks being written under ``root`` (the cache's ``avatars`` folder)."""
    return sum(_tree_size(folder)[0] for folder in root.glob(BANK_IN_PROGRESS_PREFIX + "*"))


def prune(root: Path, max_bytes: int, keep: tuple[Path, ...] = (), in_use_s: float = IN_USE_S) -> list[CachedAvatar]:
    """Remove the least recently used avatars under ``root`` until they, and the mouth banks being written,
    take at most ``max_bytes`` (0: no limit); never those in ``keep`` or used within ``in_use_s``.
    Returns the ones removed."""
    if max_bytes <= 0:
        return []
    for left in root.glob(".removing-*"):  # a removal cut short by a killed process
        shutil.rmtree(left, ignore_errors=True)
    avatars = cached_avatars(root)
    # Banks still being written count: several jobs writing gigabytes each would otherwise fill the disk
    # while the finished avatars alone look within budget.
    total = sum(a.bytes for a in avatars) + banks_in_progress_bytes(root)
    if total <= max_bytes:
        return []
    now = time.time()
    kept = {k.resolve() for k in keep}
    removed = []
    for a in avatars:
        if total <= max_bytes:
            break
        if a.folder.resolve() in kept or now - a.last_used < in_use_s:
            continue
        if _remove(a.folder, in_use_s):
            total -= a.bytes
            removed.append(a)
    if removed:
        log.info("Avatar cache: removed %d avatar(s) used longest ago (%.1f GB) to stay within %.1f GB.",
                 len(removed), sum(a.bytes for a in removed) / GB, max_bytes / GB)
    if total > max_bytes:
        log.warning("The avatar cache holds %.1f GB, over its %.1f GB budget, but the rest is in use; set %s "
                    "higher or free some disk space.", total / GB, max_bytes / GB, MAX_GB_ENV)
    return removed


def _source(folder: Path) -> str:
    try:
        return str(json.loads((folder / "meta.json").read_text()).get("source", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _remove(folder: Path, in_use_s: float) -> bool:
    """Remove an avatar folder unless a job has marked it since it was listed. It is renamed first
    (atomic), so a job never finds it half-removed: either it is there whole, or it is gone."""
    if time.time() - _last_used(folder, 0.0) < in_use_s:
        return False
    trash = folder.with_name(f".removing-{folder.name}-{os.getpid()}")
    try:
        os.replace(folder, trash)
    except OSError:
        return False  # gone already, or in use where the OS will not let it go
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _tree_size(folder: Path) -> tuple[int, float]:
    """Bytes of the files under ``folder`` and the newest modification time among them."""
    size, newest = 0, 0.0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue  # removed while we looked
            size += st.st_size
            newest = max(newest, st.st_mtime)
    return size, newest
