"""The broker, database and storage addresses that the server and the workers share."""

from __future__ import annotations

import importlib.util
import os

from lipdub.errors import ConfigError
from lipdub.studio.jobs.storage import LocalStorage, Storage

# The optional dependencies of scale-out: Celery, Redis, psycopg.
SCALE_EXTRA = "lipdub[scale]"


def normalize_db_url(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; use psycopg 3 (the declared extra) when that is
    what is installed, so the URL from the issue/docs works as written."""
    if url.startswith(("postgresql://", "postgres://")):
        if importlib.util.find_spec("psycopg2") is None:
            if importlib.util.find_spec("psycopg") is None:
                raise ConfigError("A PostgreSQL job store needs psycopg, which is not installed; install it "
                                  f"with: pip install '{SCALE_EXTRA}'")
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_storage(spec: str | os.PathLike) -> Storage:
    """The shared storage a worker and the server agree on. Today a mounted directory (NFS or
    similar); an ``s3://`` store plugs in here (and in the render child) later."""
    text = str(spec)
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"Unsupported storage {text!r}: give a directory every machine mounts.")
    return LocalStorage(text.removeprefix("file://"))


def redact(url: str) -> str:
    """A broker/database URL without its password, for logs and the UI."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"
