"""The studio server: FastAPI with the REST API under /api/v1 and the Gradio UI mounted at /."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from lipdub import __version__
from lipdub.errors import LipdubError
from lipdub.studio.jobs.service import Studio
from lipdub.studio.settings import Settings
from lipdub.studio.web.security import is_loopback

log = logging.getLogger(__name__)

UI_THREADS = 16
UI_EVENTS = 1000


def create_app(settings: Settings, studio: Studio | None = None) -> FastAPI:
    """Build the app; the worker pool starts with the app (lifespan) and stops with it."""
    studio = studio or Studio.from_settings(settings)
    from lipdub.studio.web.security import RateLimiter, resolve_auth

    # Before anything is mounted: a refused setting stops the start with its sentence.
    auth = resolve_auth(settings.auth, settings.host, studio.storage.root)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        studio.start()
        log.info("Studio ready: data in %s", studio.storage.root)
        try:
            yield
        finally:
            studio.stop()

    app = FastAPI(title="lipdub studio", version=__version__, lifespan=lifespan,
                  description="Make the person in a video or photo speak a recording. Submit jobs, follow "
                              "their progress, download results; the web UI lives at `/`. Every error is "
                              '`{"detail": "<one sentence>", "field": "<form field or empty>"}`.')
    app.state.studio = studio
    from lipdub.studio.web.api import error_handlers, router

    app.include_router(router)
    for exc, handler in error_handlers().items():
        app.add_exception_handler(exc, handler)

    # One bucket per client for submissions, whether they come through the API or the UI.
    limiter = (RateLimiter(settings.rate_per_minute, settings.rate_burst)
               if settings.rate_per_minute > 0 else None)
    demo = _mount_ui(app, settings, studio, limiter)
    _guard(app, settings, auth, limiter, studio.storage.ui_dir)
    app.state.ui = demo
    return app


def _mount_ui(app: FastAPI, settings: Settings, studio: Studio, limiter: Any) -> Any:
    """Mount Gradio so that it reads and serves only what the studio gives it: its own uploads (under the
    data dir) and the results' thumbnails; never the database, the token, the stored inputs or a path a
    request names."""
    # Gradio names its upload folder from this variable, read when each component is made and again
    # when a request's files are checked; it has to be in place before the UI is built.
    os.environ["GRADIO_TEMP_DIR"] = str(studio.storage.ui_dir)
    import gradio as gr

    from lipdub.studio.web.ui import CSS, build_ui

    demo = build_ui(studio, limiter=limiter)
    demo.queue(default_concurrency_limit=None)
    # Gradio's own thread pool: its handlers then never take the threads that answer /api/v1.
    demo.max_threads = UI_THREADS
    # Gradio runs at most this many events at once (40 by default, its thread count). A page following
    # a render holds one for the whole render while costing only a timer, so 40 such pages would leave
    # every other page's clicks waiting; work that needs a thread is bounded by UI_THREADS instead.
    demo._queue.max_thread_count = UI_EVENTS
    app = gr.mount_gradio_app(app, demo, path="/", allowed_paths=[str(studio.storage.root / "jobs")],
                              blocked_paths=[str(p) for p in _private_paths(settings, studio)],
                              max_file_size=int(settings.max_upload_mb * 1024 * 1024), css=CSS,
                              footer_links=["api"], ssr_mode=False, run_history=False, mcp_server=False)
    # Gradio checks that a file named in a request was uploaded through it only once the app counts as
    # launched, which a mounted app never does: without this, any server path is copied and served.
    demo.has_launched = True
    return demo


def _private_paths(settings: Settings, studio: Studio) -> list[Path]:
    """What Gradio must never open, copy or serve, whatever a request or a handler names."""
    from lipdub.face.avatar import default_cache_root
    from lipdub.studio.web.security import TOKEN_FILE

    root = studio.storage.root
    paths = [root / "uploads", root / "tmp", root / TOKEN_FILE, default_cache_root()]
    url = settings.database_url
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///")).resolve()
        paths += [db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal"))]
    return paths


def _guard(app: FastAPI, settings: Settings, auth: Any, limiter: Any, ui_dir: Path) -> None:
    """Host allow-list, cross-site refusal, auth, size and rate limits in front of everything (API and
    UI); CORS only when asked for."""
    from fastapi.middleware.cors import CORSMiddleware

    from lipdub.studio.web.security import Guard, RateLimiter, allowed_host_names

    # Always present, even with no origin allowed: Gradio stands its own CORS aside only when the parent
    # app has one, and Gradio's reflects any Origin as soon as the Host is not localhost.
    app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                       allow_headers=["*"], allow_credentials=False)
    # A submission through the UI is two uploads (speech, face) before the press of a button.
    uploads = (RateLimiter(2 * settings.rate_per_minute, 2 * settings.rate_burst)
               if settings.rate_per_minute > 0 else None)
    hosts = allowed_host_names(settings.host, settings.allowed_hosts)
    if hosts == allowed_host_names("127.0.0.1") and not is_loopback(settings.host):
        log.warning("Bound to %r, but only requests for %s are answered; add the names clients use with "
                    "--allowed-host NAME.", settings.host, ", ".join(sorted(hosts)))
    # Added last, so it runs first: nothing (CORS preflight included) reaches the app unchecked.
    app.add_middleware(Guard, auth=auth, max_body=int(settings.max_request_mb * 1024 * 1024), limiter=limiter,
                       max_part=int(settings.max_upload_mb * 1024 * 1024), upload_limiter=uploads,
                       allowed_hosts=hosts, cors_origins=settings.cors_origins, ui_dir=ui_dir)


def serve(settings: Settings) -> None:
    """Run the server in the foreground until Ctrl-C."""
    import uvicorn

    app = create_app(settings)
    log.info("Serving on http://%s:%d (API docs at /docs)", settings.host, settings.port)
    # log_config=None: uvicorn logs through our root handler, in our format.
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Parse the server's options and serve until Ctrl-C; a refused setting is one line, no traceback."""
    from lipdub.logs import setup_logging
    from lipdub.studio.settings import settings_from_args

    settings, verbose = settings_from_args(argv, prog)
    setup_logging(verbose)
    try:
        serve(settings)
    except LipdubError as e:
        logging.getLogger("lipdub").error("%s", e)
        sys.exit(e.exit_code)
