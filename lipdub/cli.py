"""The ``lipdub`` command line. Each subcommand lives in its own module under lipdub/commands/."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import typer

from lipdub import commands
from lipdub.errors import LipdubError

app = typer.Typer(
    name="lipdub",
    help="Make the person in a video or photo speak a recording.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    # Every module in lipdub/commands/ exposes register(app).
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def main() -> None:
    try:
        app()
    except LipdubError as e:
        logging.getLogger("lipdub").error("%s", e)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        logging.getLogger("lipdub").error("Interrupted.")
        sys.exit(130)


if __name__ == "__main__":
    main()
