"""``lipdub serve``: the studio (web UI, REST API and job queue)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        port: int = typer.Option(7860, help="TCP port."),
        host: str = typer.Option("127.0.0.1", help="Address to bind; loopback by default."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
        workers: int = typer.Option(0, help="Render processes at once; 0: one per GPU, or cores/2 on CPU."),
        data_dir: Path = typer.Option(Path("data"), help="Database, uploads, results and logs."),
        retention_days: float = typer.Option(0.0, help="Delete finished jobs older than this; 0 keeps them."),
        max_upload_mb: float = typer.Option(2048.0, help="Largest accepted upload (enforced while streaming)."),
        max_duration: float | None = typer.Option(None, help="Longest accepted audio and template video, seconds "
                                                  "(default: 1800 s of speech, 600 s of template video)."),
        max_side: int = typer.Option(4096, help="Largest accepted picture side, pixels."),
        broker: str | None = typer.Option(None, help="Celery broker (redis://HOST:6379/0): `lipdub worker` renders."),
        db: str | None = typer.Option(None, help="Job store URL (postgresql://...); default SQLite in the data dir."),
        storage: Path | None = typer.Option(None, help="Shared storage directory (same as --data-dir)."),
        auth: str | None = typer.Option(None, help="token:SECRET or USER:PASSWORD; beyond loopback a token is "
                                        "generated on the first start if none is given."),
        cors_origin: list[str] = typer.Option([], help="Allow browser calls from this origin (repeatable)."),
        allowed_host: list[str] = typer.Option([], help="Answer requests for this Host name besides "
                                               "localhost and the bound address (repeatable; '*': any)."),
        max_request_mb: float = typer.Option(2100.0, help="Largest request body."),
        rate_limit: float = typer.Option(30.0, help="Job submissions per minute per client (0: off)."),
        job_timeout: float = typer.Option(4 * 3600.0, help="Seconds before a render is stopped."),
        job_memory_mb: float = typer.Option(8192.0, help="Memory (MB) before a render is stopped."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        """Serve the web studio and the REST API (/api/v1, docs at /docs)."""
        from lipdub.cli import setup_logging
        from lipdub.jobs.service import Settings
        from lipdub.web.app import serve

        setup_logging(verbose)
        serve(Settings(data_dir=storage or data_dir, device=device, workers=workers or None, host=host, port=port,
                       retention_days=retention_days, max_upload_mb=max_upload_mb, max_duration_s=max_duration, max_side=max_side,
                       broker_url=broker, db_url=db, auth=auth, cors_origins=tuple(cors_origin),
                       allowed_hosts=tuple(allowed_host),
                       max_request_mb=max_request_mb, rate_per_minute=rate_limit, job_timeout_s=job_timeout,
                       job_memory_mb=job_memory_mb))
