"""Start the lipdub studio: ``python app.py --port 7860 --device auto``, then open http://127.0.0.1:7860."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="lipdub studio: web UI, REST API (/api/v1, /docs) and job queue.")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    ap.add_argument("--workers", type=int, default=0, help="render processes at once (0: from the device)")
    ap.add_argument("--data-dir", type=Path, default=Path("data"), help="database, uploads, results, logs")
    ap.add_argument("--retention-days", type=float, default=0.0, help="delete finished jobs after N days (0: never)")
    ap.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest upload (enforced while streaming)")
    ap.add_argument("--max-duration", type=float, default=None, help="longest audio and template, seconds "
                    "(default: 1800 s of speech, 600 s of template video)")
    ap.add_argument("--max-side", type=int, default=4096, help="largest picture side accepted, pixels")
    ap.add_argument("--broker", default=None, help="Celery broker (redis://HOST:6379/0): `lipdub worker` processes "
                    "render the jobs instead of this server")
    ap.add_argument("--db", default=None, help="job store as an SQLAlchemy URL (postgresql://... to share it with "
                    "workers on other machines; default: SQLite in the data dir)")
    ap.add_argument("--storage", type=Path, default=None, help="shared storage directory (same as --data-dir)")
    ap.add_argument("--auth", default=None, help="token:SECRET or USER:PASSWORD; beyond loopback a token is generated "
                    "on the first start if none is given")
    ap.add_argument("--cors-origin", action="append", default=[], help="allow browser calls from this origin "
                    "(repeatable; default: none)")
    ap.add_argument("--allowed-host", action="append", default=[], help="answer requests for this Host name "
                    "besides localhost and the bound address (repeatable; '*': any)")
    ap.add_argument("--max-request-mb", type=float, default=2100.0, help="largest request body")
    ap.add_argument("--rate-limit", type=float, default=30.0, help="job submissions per minute per client (0: off)")
    ap.add_argument("--job-timeout", type=float, default=4 * 3600.0, help="seconds before a render is stopped")
    ap.add_argument("--job-memory-mb", type=float, default=8192.0, help="memory before a render is stopped")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    from lipdub.cli import setup_logging
    from lipdub.errors import LipdubError
    from lipdub.jobs.service import Settings
    from lipdub.web.app import serve

    setup_logging(args.verbose)
    settings = Settings(data_dir=args.storage or args.data_dir, device=args.device, workers=args.workers or None,
                        host=args.host, port=args.port, retention_days=args.retention_days, max_upload_mb=args.max_upload_mb,
                        max_duration_s=args.max_duration, max_side=args.max_side, broker_url=args.broker, db_url=args.db,
                        auth=args.auth, cors_origins=tuple(args.cors_origin), allowed_hosts=tuple(args.allowed_host),
                        max_request_mb=args.max_request_mb, rate_per_minute=args.rate_limit, job_timeout_s=args.job_timeout,
                        job_memory_mb=args.job_memory_mb)
    try:
        serve(settings)
    except LipdubError as e:  # a refused setting: one line, no traceback
        logging.getLogger("lipdub").error("%s", e)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
