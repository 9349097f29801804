"""``lipdub cache``: what the avatar cache holds, and pruning or clearing it.

Avatars (a template's face analysis and its mouth bank) are kept so the next job with the same
template skips the analysis; a 1080p mouth bank takes about 1 GB per minute of template.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from lipdub.logs import setup_logging

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    @app.command()
    def cache(
        prune_now: bool = typer.Option(False, "--prune", help="Remove the avatars used longest ago until the cache "
                                       "fits its budget ($LIPDUB_CACHE_MAX_GB, default 20)."),
        clear: bool = typer.Option(False, "--clear", help="Remove every avatar not used in the last hour."),
        cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Cache folder (default: $LIPDUB_CACHE or "
                                              "~/.cache/lipdub)."),
    ) -> None:
        """List the cached avatars (templates analysed before) and their size; prune or clear them."""
        setup_logging()
        from rich.console import Console
        from rich.table import Table

        from lipdub.face.avatar import default_cache_root
        from lipdub.face.cache import GB, avatars_root, budget_bytes, cached_avatars, prune

        root = avatars_root(cache_dir or default_cache_root())
        budget = budget_bytes()
        if clear:
            prune(root, 1)  # a budget of one byte: everything that is not in use goes
        elif prune_now:
            prune(root, budget)
        avatars = cached_avatars(root)
        now = time.time()
        table = Table(title=f"avatar cache: {root}")
        for column in ("avatar", "template", "size", "last used"):
            table.add_column(column, justify="right" if column == "size" else "left")
        for a in reversed(avatars):  # most recent first
            table.add_row(a.folder.name, a.source or "?", f"{a.bytes / GB:.2f} GB", _ago(now - a.last_used))
        Console().print(table)
        total = sum(a.bytes for a in avatars)
        limit = f"{budget / GB:g} GB" if budget > 0 else "no limit"
        log.info("%d avatar(s), %.2f GB; budget %s.", len(avatars), total / GB, limit)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return "just now"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
