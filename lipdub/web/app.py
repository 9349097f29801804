"""The studio server: FastAPI with the REST API under /api/v1 and the Gradio UI mounted at /."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from lipdub import __version__
from lipdub.jobs.service import DiskFull, Settings, Studio, ValidationError

log = logging.getLogger(__name__)


def create_app(settings: Settings, studio: Studio | None = None) -> FastAPI:
    """Build the app; the worker pool starts with the app (lifespan) and stops with it."""
    studio = studio or Studio.from_settings(settings)

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
                              "their progress, download results; the web UI lives at `/`.")
    app.state.studio = studio
    from lipdub.web.api import router, validation_error_handler

    app.include_router(router)
    app.add_exception_handler(ValidationError, validation_error_handler)
    app.add_exception_handler(DiskFull, lambda _r, e: JSONResponse(status_code=507, content={"detail": str(e)}))

    import gradio as gr

    from lipdub.web.ui import CSS, build_ui

    demo = build_ui(studio)
    demo.queue(default_concurrency_limit=None)
    app = gr.mount_gradio_app(app, demo, path="/", allowed_paths=[str(studio.storage.root / "jobs")],
                               max_file_size=int(settings.max_upload_mb * 1024 * 1024), css=CSS,
                               footer_links=["api"], ssr_mode=False)
    _guard(app, settings, studio)
    return app


def _guard(app: FastAPI, settings: Settings, studio: Studio) -> None:
    """Auth, size and rate limits in front of everything (API and UI); CORS only when asked for."""
    from fastapi.middleware.cors import CORSMiddleware

    from lipdub.web.security import Guard, RateLimiter, resolve_auth

    # Always present, even with no origin allowed: Gradio stands its own CORS aside only when the parent
    # app has one, and Gradio's reflects any Origin as soon as the Host is not localhost.
    app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                       allow_headers=["*"], allow_credentials=False)
    limiter = RateLimiter(settings.rate_per_minute, settings.rate_burst) if settings.rate_per_minute > 0 else None
    # Added last, so it runs first: nothing (CORS preflight included) reaches the app unauthenticated.
    app.add_middleware(Guard, auth=resolve_auth(settings.auth, settings.host, studio.storage.root),
                       max_body=int(settings.max_request_mb * 1024 * 1024), limiter=limiter)


def serve(settings: Settings) -> None:
    """Run the server in the foreground until Ctrl-C."""
    import uvicorn

    app = create_app(settings)
    log.info("Serving on http://%s:%d (API docs at /docs)", settings.host, settings.port)
    # log_config=None: uvicorn logs through our root handler, in our format.
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
