"""``lipdub worker``: a Celery worker that renders the studio's jobs (scale-out mode)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker_cmd(
        broker: str = typer.Option(..., help="Celery broker, e.g. redis://HOST:6379/0 (the server's --broker)."),
        db: str = typer.Option(..., help="The shared job store: postgresql://USER:PASS@HOST/DB, or sqlite:///FILE "
                               "when the server and the workers share one machine."),
        storage: str = typer.Option(..., help="The shared storage directory (the server's --storage / --data-dir)."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps; run one worker per GPU."),
        queue: str = typer.Option("lipdub", help="Celery queue to take jobs from."),
        visibility_timeout: float = typer.Option(
            7200.0, help="Seconds before Redis hands an unacknowledged job to another worker; longer than the "
            "longest render. A dead worker's job is re-sent by the app from its heartbeat within about 40 s; "
            "this is the last resort when no app is running."),
        name: str | None = typer.Option(None, help="Worker node name (default: lipdub-DEVICE-PID@HOST)."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        """Render jobs from the studio's Celery queue, one at a time, on one device."""
        from lipdub.logs import setup_logging
        from lipdub.studio.scaleout.worker import run_worker

        setup_logging(verbose)
        run_worker(broker, db, storage, device=device, queue=queue, visibility_timeout=visibility_timeout,
                   name=name, loglevel="DEBUG" if verbose else "INFO")
