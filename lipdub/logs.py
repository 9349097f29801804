"""How the command line, the studio and its workers log: ``[INFO] message`` on stderr."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    """Log as ``[INFO] message`` on stderr; quiet the chatty libraries underneath."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="[%(levelname)s] %(message)s",
                        stream=sys.stderr, force=True)
    for noisy in ("matplotlib", "PIL", "urllib3", "httpx", "asyncio", "multipart", "jax", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
