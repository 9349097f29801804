"""The studio's front door: authentication, request-size and rate limits, as one pure ASGI middleware
so that it covers the REST API and the mounted Gradio UI alike, and sees the body while it streams."""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

TOKEN_FILE = "auth_token"
COOKIE = "lipdub_token"
PUBLIC_HEALTH = "/api/v1/health"
# Submissions are what costs CPU; reading status is cheap and polled often.
RATE_LIMITED = ("/api/v1/jobs", "/api/v1/batches")


@dataclass(frozen=True)
class Auth:
    """``token`` (Bearer, ``?token=`` once, then a cookie) or ``user``/``password`` (HTTP Basic)."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    def check(self, headers: dict[str, str], query: str) -> bool:
        got = headers.get("authorization", "")
        if self.token is not None:
            candidates = []
            if got.lower().startswith("bearer "):
                candidates.append(got[7:].strip())
            cookie = SimpleCookie(headers.get("cookie", ""))
            if COOKIE in cookie:
                candidates.append(cookie[COOKIE].value)
            candidates += parse_qs(query).get("token", [])
            return any(hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates)
        if got.lower().startswith("basic "):
            try:
                user, _, pw = base64.b64decode(got[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return (hmac.compare_digest(user.encode(), (self.user or "").encode())
                    & hmac.compare_digest(pw.encode(), (self.password or "").encode()))
        return False


def parse_auth(spec: str) -> Auth:
    """``token:XYZ`` or ``user:pass`` (a bare string is a token)."""
    kind, sep, rest = spec.partition(":")
    if not sep:
        return Auth(token=spec)
    if kind == "token":
        if len(rest) < 8:
            raise ValueError("An auth token needs at least 8 characters.")
        return Auth(token=rest)
    if not kind or not rest:
        raise ValueError("Give --auth token:SECRET or --auth USER:PASSWORD.")
    return Auth(user=kind, password=rest)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_auth(spec: str | None, host: str, data_dir: Path) -> Auth | None:
    """The auth the server runs with: the one given; none on loopback; else a token generated on the
    first start, kept in the data dir (mode 0600) and announced once."""
    if spec:
        return parse_auth(spec)
    if is_loopback(host):
        return None
    path = Path(data_dir) / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        log.warning("Listening beyond loopback: the API and UI need the token in %s "
                    "(Authorization: Bearer TOKEN, or open /?token=TOKEN once in a browser).", path)
        return Auth(token=token)
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.warning("Listening on %s beyond loopback with no --auth: generated an access token (saved in %s):\n\n"
                "    %s\n\nSend it as 'Authorization: Bearer TOKEN', or open http://HOST:PORT/?token=TOKEN once "
                "in a browser. Set your own with --auth token:SECRET or --auth USER:PASSWORD.", host, path, token)
    return Auth(token=token)


class RateLimiter:
    """A token bucket per client address: ``burst`` requests at once, refilled at ``per_minute``."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> float:
        """0 if allowed, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > 10_000:  # forget idle clients; the map must not grow forever
                    self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 3600}
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate if self.rate > 0 else 3600.0


class _TooLarge(HTTPException):
    """Raised from ``receive``: FastAPI and Gradio re-raise HTTPExceptions from body parsing as they are."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request is larger than the {limit / (1024 * 1024):g} MB limit.")


class Guard:
    """ASGI middleware: auth, body-size cap (while streaming), rate limit on submissions."""

    def __init__(self, app: Any, *, auth: Auth | None, max_body: int, limiter: RateLimiter | None) -> None:
        self.app, self.auth, self.max_body, self.limiter = app, auth, max_body, limiter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        query = scope.get("query_string", b"").decode("latin-1")
        set_cookie = False
        if self.auth is not None and not self.auth.check(headers, query):
            if path == PUBLIC_HEALTH and scope["type"] == "http":  # liveness for load balancers, no details
                return await _json(send, 200, {"status": "ok"})
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 4401})
            extra = [(b"www-authenticate", b'Basic realm="lipdub"')] if self.auth.user else []
            return await _json(send, 401, {"detail": "Authentication required."}, extra)
        if self.auth is not None and self.auth.token and "token=" in query:
            set_cookie = True  # a browser opened /?token=...: remember it so the UI's own requests pass
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)

        method = scope.get("method", "GET")
        if self.limiter is not None and method == "POST" and path.rstrip("/") in RATE_LIMITED:
            client = (scope.get("client") or ("?", 0))[0]
            wait = self.limiter.allow(client)
            if wait:
                return await _json(send, 429, {"detail": f"Too many submissions; try again in {wait:.0f} s."},
                                   [(b"retry-after", str(max(1, round(wait))).encode())])
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _json(send, 413, {"detail": self._too_large()})

        seen = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge(self.max_body)
            return msg

        async def send_wrapper(msg: dict) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
                if set_cookie and self.auth is not None and self.auth.token:
                    msg = dict(msg)
                    msg["headers"] = [*msg.get("headers", []), (b"set-cookie", f"{COOKIE}={self.auth.token}; "
                                      "HttpOnly; SameSite=Strict; Path=/".encode())]
            await send(msg)

        try:
            await self.app(scope, counted_receive, send_wrapper)
        except _TooLarge:
            log.warning("Refused a request body over %d bytes from %s", self.max_body, (scope.get("client") or "?"))
            if not started:
                await _json(send, 413, {"detail": self._too_large()})

    def _too_large(self) -> str:
        return f"The request is larger than the {self.max_body / (1024 * 1024):g} MB limit."


async def _json(send: Any, status: int, body: dict, extra: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": data})
