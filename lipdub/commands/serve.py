"""``lipdub serve``: the studio (web UI, REST API and job queue), with the options lipdub.studio.settings
declares (the same as ``python app.py``)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve", add_help_option=False,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def serve_cmd(ctx: typer.Context) -> None:
        """Serve the web studio and the REST API (/api/v1, docs at /docs); --help lists the options."""
        from lipdub.studio.web.app import main

        main(list(ctx.args), prog="lipdub serve")
