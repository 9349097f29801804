"""User-facing errors: each message is one sentence the user can act on."""

from __future__ import annotations


class LipdubError(Exception):
    """Base class for errors shown to the user as one line, without a traceback."""

    exit_code = 2


class InputError(LipdubError):
    """An input file is missing, unreadable, of the wrong kind or outside the limits."""


class NoFaceError(InputError):
    """The template has no detectable face on any frame."""


class ModelError(LipdubError):
    """Model weights are missing, truncated or of the wrong network."""


class DeviceError(LipdubError):
    """The requested compute device cannot be used."""


class ConfigError(LipdubError):
    """A setting the program was started with cannot be used (a too short token, a bad host name)."""
