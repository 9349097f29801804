"""The studio's options: one :class:`Settings`, whose fields carry their command-line flags and help, so that
``app.py`` and ``lipdub serve`` take the same options with the same defaults and words."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from lipdub.media.limits import Limits


def option(default: Any, flag: str, help: str, **kw: Any) -> Any:
    """A Settings field that is also a command-line option ``flag``."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"flag": flag, "help": help, **kw})
    return field(default=default, metadata={"flag": flag, "help": help, **kw})


@dataclass
class Settings:
    """Everything the studio is started with."""

    data_dir: Path = option(Path("data"), "--data-dir", "Database, uploads, results and logs.", type=Path)
    device: str = option("auto", "--device", "auto, cpu, cuda, cuda:N or mps.")
    workers: int | None = option(None, "--workers", "Render processes at once (default: one per GPU, or one per "
                                 "two cores on the CPU).", type=int)
    host: str = option("127.0.0.1", "--host", "Address to bind (default: loopback only).")
    port: int = option(7860, "--port", "TCP port.", type=int)
    db_url: str | None = option(None, "--db", "Job store as an SQLAlchemy URL (postgresql://... to share it with "
                                "workers on other machines; default: SQLite in the data dir).")
    broker_url: str | None = option(None, "--broker", "Celery broker (redis://HOST:6379/0): `lipdub worker` "
                                    "processes render the jobs instead of this server.")
    retention_days: float = option(0.0, "--retention-days", "Delete finished jobs after this many days "
                                   "(0: keep them).", type=float)
    max_upload_mb: float = option(2048.0, "--max-upload-mb", "Largest upload, MB (enforced while it streams).",
                                  type=float)
    # Caps both durations below when given.
    max_duration_s: float | None = option(None, "--max-duration", "Longest audio and template video, seconds "
                                          "(default: 1800 s of speech, 600 s of template video).", type=float)
    max_audio_s: float = 30 * 60.0
    max_video_s: float = 10 * 60.0
    max_side: int = option(4096, "--max-side", "Largest picture side accepted, pixels.", type=int)
    max_batch_items: int = 100
    # The front door (lipdub/studio/web/security.py).
    auth: str | None = option(None, "--auth", "token:SECRET or USER:PASSWORD; beyond loopback a token is "
                              "generated on the first start if none is given.")
    cors_origins: tuple[str, ...] = option((), "--cors-origin", "Allow browser calls from this origin "
                                           "(repeatable; default: none).", action="append")
    allowed_hosts: tuple[str, ...] = option((), "--allowed-host", "Answer requests for this Host name besides "
                                            "localhost and the bound address (repeatable; '*': any).",
                                            action="append")
    max_request_mb: float = option(2100.0, "--max-request-mb", "Largest request body, MB.", type=float)
    rate_per_minute: float = option(30.0, "--rate-limit", "Job submissions per minute per client (0: off).",
                                    type=float)
    rate_burst: int = 20
    # Render children (lipdub/studio/jobs/runner.py): killed and the job failed beyond these.
    job_timeout_s: float = option(4 * 3600.0, "--job-timeout", "Seconds before a render is stopped.", type=float)
    job_memory_mb: float = option(8192.0, "--job-memory-mb", "Memory (MB) before a render is stopped.",
                                  type=float)

    @property
    def limits(self) -> Limits:
        return Limits.from_options(max_upload_mb=self.max_upload_mb, max_duration_s=self.max_duration_s,
                                   max_audio_s=None if self.max_duration_s else self.max_audio_s,
                                   max_video_s=None if self.max_duration_s else self.max_video_s,
                                   max_side=self.max_side)

    @property
    def database_url(self) -> str:
        from lipdub.studio.jobs.store import sqlite_url

        return self.db_url or sqlite_url(Path(self.data_dir) / "lipdub.db")


def argument_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The server's command line, built from the Settings fields that are options."""
    parser = argparse.ArgumentParser(prog=prog, description="The lipdub studio: web UI, REST API (/api/v1, docs "
                                     "at /docs) and job queue.")
    for f in fields(Settings):
        if "flag" not in f.metadata:
            continue
        meta = dict(f.metadata)
        flag, text = meta.pop("flag"), meta.pop("help")
        default = f.default if f.default is not MISSING else None
        if meta.get("action") == "append":
            default = None  # argparse appends to its default; the empty tuple comes from Settings
        parser.add_argument(flag, dest=f.name, default=default, help=text,
                            metavar=flag.lstrip("-").upper().replace("-", "_"), **meta)
    parser.add_argument("--storage", type=Path, default=None, help="Shared storage directory (same as --data-dir).")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log more detail.")
    return parser


def settings_from_args(argv: list[str] | None = None, prog: str | None = None) -> tuple[Settings, bool]:
    """Settings from a command line, and whether to log verbosely."""
    args = vars(argument_parser(prog).parse_args(argv))
    verbose, storage = args.pop("verbose"), args.pop("storage")
    if storage is not None:
        args["data_dir"] = storage
    for name in ("cors_origins", "allowed_hosts"):
        args[name] = tuple(args[name] or ())
    if not args["workers"]:
        args["workers"] = None  # 0 or none: sized from the device
    return Settings(**args), verbose
