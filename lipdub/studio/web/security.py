"""The studio's front door: Host allow-list, cross-site refusal, authentication, request-size and rate
limits and security headers, as one pure ASGI middleware so that it covers the REST API and the mounted
Gradio UI alike, and sees the body while it streams."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.exceptions import HTTPException

from lipdub.errors import ConfigError

log = logging.getLogger(__name__)

TOKEN_FILE = "auth_token"
SESSION_COOKIE = "lipdub_session"
SESSION_MAX_AGE_S = 30 * 24 * 3600
MIN_TOKEN_CHARS = 16
MIN_PASSWORD_CHARS = 8
PUBLIC_HEALTH = "/api/v1/health"
# Submissions are what costs CPU; reading status is cheap and polled often. The UI's submissions take
# the same bucket in lipdub/studio/web/ui.py.
RATE_LIMITED = ("/api/v1/jobs", "/api/v1/batches")
GRADIO_UPLOAD = "/gradio_api/upload"
UI_EVENT_MAX_BYTES = 1 << 20  # a UI event carries settings and file references, never file contents
# Gradio routes the studio never uses: fetching URLs on the server's behalf, sending history to a hub,
# screen recordings, live code editing.
GRADIO_REFUSED = ("/gradio_api/proxy=", "/gradio_api/file=http:", "/gradio_api/file=https:",
                  "/gradio_api/run-history", "/gradio_api/process_recording", "/gradio_api/vibe-",
                  "/gradio_api/undo-vibe-edit", "/gradio_api/dev/", "/gradio_api/mcp", "/monitoring")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# Gradio's page needs inline scripts and styles and evaluates some code; what the policy adds is that
# nothing loads from, posts to or frames the studio from elsewhere.
CSP_STUDIO = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
              "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' data: blob:; "
              "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; "
              "base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
# FastAPI's /docs and /redoc pages load Swagger UI and ReDoc from this CDN.
CSP_DOCS = CSP_STUDIO.replace("script-src 'self'", "script-src 'self' https://cdn.jsdelivr.net").replace(
    "style-src 'self'", "style-src 'self' https://cdn.jsdelivr.net").replace(
    "img-src 'self'", "img-src 'self' https://fastapi.tiangolo.com https://cdn.redoc.ly")


@dataclass(frozen=True)
class Auth:
    """``token`` (Bearer, ``?token=`` once, then a session cookie) or ``user``/``password`` (HTTP Basic)."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    def check(self, headers: dict[str, str], query: str) -> bool:
        got = headers.get("authorization", "")
        if self.token is not None:
            candidates = []
            if got.lower().startswith("bearer "):
                candidates.append(got[7:].strip())
            candidates += parse_qs(query).get("token", [])
            if any(hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates):
                return True
            cookie = SimpleCookie()
            with contextlib.suppress(CookieError):
                cookie.load(headers.get("cookie", ""))
            return SESSION_COOKIE in cookie and self.session_ok(cookie[SESSION_COOKIE].value)
        if got.lower().startswith("basic "):
            try:
                user, _, pw = base64.b64decode(got[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return (hmac.compare_digest(user.encode(), (self.user or "").encode())
                    & hmac.compare_digest(pw.encode(), (self.password or "").encode()))
        return False

    def new_session(self, now: float | None = None) -> str:
        """A cookie value that proves the token was shown, without holding it: ``issued.signature``."""
        issued = str(int(time.time() if now is None else now))
        return f"{issued}.{self._sign(issued)}"

    def session_ok(self, value: str, now: float | None = None) -> bool:
        issued, _, sig = value.partition(".")
        if not issued.isdigit() or not sig:
            return False
        age = (time.time() if now is None else now) - int(issued)
        return 0 <= age < SESSION_MAX_AGE_S and hmac.compare_digest(sig, self._sign(issued))

    def _sign(self, issued: str) -> str:
        message = f"lipdub-session:{issued}".encode()
        return hmac.new((self.token or "").encode(), message, hashlib.sha256).hexdigest()


def parse_auth(spec: str) -> Auth:
    """``token:XYZ`` or ``user:pass`` (a bare string is a token)."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind == "token":
        token = rest if sep else spec
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"An auth token needs at least {MIN_TOKEN_CHARS} characters; "
                              "give a longer one with --auth token:SECRET.")
        return Auth(token=token)
    if not kind or not rest:
        raise ConfigError("Give --auth token:SECRET or --auth USER:PASSWORD.")
    if len(rest) < MIN_PASSWORD_CHARS:
        raise ConfigError(f"A password needs at least {MIN_PASSWORD_CHARS} characters; "
                          "give a longer one with --auth USER:PASSWORD.")
    return Auth(user=kind, password=rest)


def is_loopback(host: str) -> bool:
    """True only for an address that binds loopback alone: an empty host or a wildcard binds every
    interface (uvicorn takes "" as all of them), a name other than localhost may resolve anywhere."""
    host = host.strip()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_host_names(bind_host: str, extra: tuple[str, ...] | list[str] = ()) -> frozenset[str]:
    """The Host names the server answers for: the loopback names, the address it binds when that is one
    address, and those configured (``*``: any)."""
    names = set(LOOPBACK_NAMES)
    bind = bind_host.strip().strip("[]").lower()
    if bind and bind not in ("0.0.0.0", "::"):
        names.add(bind)
    names.update(h.strip().strip("[]").lower() for h in extra if h.strip())
    return frozenset(names)


def host_name(value: str) -> str:
    """The name in a Host header or an origin's authority, without port or brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def resolve_auth(spec: str | None, host: str, data_dir: Path) -> Auth | None:
    """The auth the server runs with: the one given; none when bound to loopback only; else a token
    generated on the first start, kept in the data dir (mode 0600). The token itself never goes to
    the log: it is shown once on an interactive terminal, and the log names the file that holds it."""
    if spec:
        return parse_auth(spec)
    if is_loopback(host):
        return None
    path = Path(data_dir) / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"The token in {path} is shorter than {MIN_TOKEN_CHARS} characters; delete the "
                              "file to have a new one generated, or give --auth token:SECRET.")
        log.warning("Listening on %r, beyond loopback: the API and UI need the token in %s "
                    "(Authorization: Bearer TOKEN, or open /?token=TOKEN once in a browser).", host, path)
        return Auth(token=token)
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.warning("Listening on %r, beyond loopback, with no --auth: generated an access token, saved in %s "
                "(mode 0600). Send it as 'Authorization: Bearer TOKEN', or open "
                "http://HOST:PORT/?token=TOKEN once in a browser. Set your own with --auth token:SECRET "
                "or --auth USER:PASSWORD.", host, path)
    _show_on_terminal(f"\n    lipdub access token: {token}\n\n")
    return Auth(token=token)


def _show_on_terminal(text: str) -> None:
    # Only an interactive terminal: stderr redirected to a file is a log file.
    stream = sys.stderr
    if stream is not None and stream.isatty():
        stream.write(text)
        stream.flush()


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

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


class _PartSizes:
    """Follows a multipart body as it streams and raises :class:`_TooLarge` as soon as one part (a file)
    is over ``limit``: at most one network read past the limit is taken in, and nothing of it is stored."""

    def __init__(self, content_type: str, limit: int) -> None:
        from python_multipart.multipart import MultipartParser, parse_options_header

        self.limit, self.size, self.over = limit, 0, False
        self._field, self._value, self._disposition = b"", b"", b""
        self._parse_options = parse_options_header
        _, params = parse_options_header(content_type)
        self.parser: Any = MultipartParser(params.get(b"boundary", b"-"), {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_header_field": self._hfield,
            "on_header_value": self._hvalue, "on_header_end": self._hend})

    def _begin(self) -> None:
        self.size, self._disposition = 0, b""

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _hend(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._disposition = self._value
        self._field, self._value = b"", b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if self.size > self.limit:
            self.over = True

    def feed(self, chunk: bytes) -> None:
        from python_multipart.exceptions import MultipartParseError

        try:
            self.parser.write(chunk)
        except MultipartParseError:
            self.feed = lambda _chunk: None  # type: ignore[method-assign]  # malformed: the app says so
            return
        if self.over:
            from lipdub.media.limits import safe_name

            _, opts = self._parse_options(self._disposition)
            name = safe_name(opts.get(b"filename", b"").decode("utf-8", "replace"), "The file")
            raise _TooLarge(f"{name} is larger than the {_mb(self.limit)} upload limit.")


class Guard:
    """ASGI middleware in front of the API and the UI alike: Host allow-list, cross-site refusal, auth,
    body and per-file size caps while streaming, rate limits, security headers."""

    def __init__(self, app: Any, *, auth: Auth | None, max_body: int, limiter: RateLimiter | None,
                 max_part: int | None = None, upload_limiter: RateLimiter | None = None,
                 allowed_hosts: frozenset[str] = frozenset(LOOPBACK_NAMES),
                 cors_origins: tuple[str, ...] = (), ui_dir: Path | None = None) -> None:
        self.app, self.auth, self.max_body, self.limiter = app, auth, max_body, limiter
        self.max_part, self.upload_limiter = max_part, upload_limiter
        self.ui_dir = os.path.normpath(ui_dir) if ui_dir is not None else None
        self.allowed_hosts, self.cors_origins = allowed_hosts, tuple(o.rstrip("/") for o in cors_origins)
        self._refused_hosts: set[str] = set()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        query = scope.get("query_string", b"").decode("latin-1")
        http = scope["type"] == "http"
        method = scope.get("method", "GET") if http else "GET"

        host = host_name(headers.get("host", ""))
        if "*" not in self.allowed_hosts and host not in self.allowed_hosts:
            if path == PUBLIC_HEALTH and http:  # load balancers probe by address; they learn nothing more
                return await _json(send, 200, {"status": "ok"})
            self._note_refused_host(host[:100])
            return await _refuse(send, http, 400, f"This server does not answer for the host name "
                                 f"'{host[:100]}'; start it with --allowed-host NAME for each name "
                                 "clients use.")
        if (not http or method not in SAFE_METHODS) and self._foreign(headers):
            return await _refuse(send, http, 403, "Cross-site request refused: send it from the studio's own "
                                 "page, or start the server with --cors-origin for that site.")
        authenticated = self.auth is None or self.auth.check(headers, query)
        if not authenticated:
            if path == PUBLIC_HEALTH and http:  # liveness for load balancers, no details
                return await _json(send, 200, {"status": "ok"})
            if not http:
                return await send({"type": "websocket.close", "code": 4401})
            extra = [(b"www-authenticate", b'Basic realm="lipdub"')] if self.auth and self.auth.user else []
            return await _json(send, 401, _error("Authentication required."), extra)
        new_session = (self.auth is not None and self.auth.token is not None and "token=" in query
                       and any(hmac.compare_digest(t.encode(), self.auth.token.encode())
                               for t in parse_qs(query).get("token", [])))
        if any(path.lower().startswith(p) for p in GRADIO_REFUSED):
            return await _refuse(send, http, 404, "Not found.")
        if not http:
            return await self.app(scope, receive, send)

        client = (scope.get("client") or ("?", 0))[0]
        if method == "POST":
            bucket = (self.limiter if path.rstrip("/") in RATE_LIMITED
                      else self.upload_limiter if path.rstrip("/") == GRADIO_UPLOAD else None)
            wait = bucket.allow(client) if bucket is not None else 0.0
            if wait:
                return await _json(send, 429, _error(f"Too many submissions; try again in {wait:.0f} s."),
                                   [(b"retry-after", str(max(1, round(wait))).encode())])
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _json(send, 413, _error(self._too_large()))

        content_type = headers.get("content-type", "")
        if (self.ui_dir is not None and method == "POST" and path.startswith("/gradio_api/")
                and path.rstrip("/") != GRADIO_UPLOAD and not content_type.lower().startswith("multipart/")):
            body = await _whole_body(receive, UI_EVENT_MAX_BYTES)
            if body is None:
                return await _json(send, 413, _error(f"A UI request is larger than {_mb(UI_EVENT_MAX_BYTES)}."))
            named = _file_outside(body, self.ui_dir)
            if named is not None:
                log.warning("Refused a UI request from %s naming a file it did not upload: %r",
                            client, named[:300])
                return await _json(send, 422, _error("A file in this request was not uploaded through the "
                                                     "studio's page; upload it there first."))
            receive = _replay(body, receive)

        parts = None
        # Gradio's own upload route enforces the same per-file limit while streaming and removes its
        # partial files itself; a refusal raised from here would leave them behind.
        if (self.max_part is not None and method == "POST" and content_type.lower().startswith("multipart/")
                and path.rstrip("/") != GRADIO_UPLOAD):
            parts = _PartSizes(content_type, self.max_part)
        seen = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                body = msg.get("body", b"")
                seen += len(body)
                if seen > self.max_body:
                    raise _TooLarge(self._too_large())
                if parts is not None and body:
                    parts.feed(body)
            return msg

        async def send_wrapper(msg: dict) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
                msg = dict(msg)
                extra = _security_headers(path, msg.get("headers", []))
                if new_session and self.auth is not None:
                    extra.append((b"set-cookie", f"{SESSION_COOKIE}={self.auth.new_session()}; HttpOnly; "
                                  f"SameSite=Strict; Path=/; Max-Age={SESSION_MAX_AGE_S}".encode()))
                msg["headers"] = [*msg.get("headers", []), *extra]
            await send(msg)

        try:
            await self.app(scope, counted_receive, send_wrapper)
        except _TooLarge as e:
            log.warning("Refused a request body from %s: %s", client, e.detail)
            if not started:
                await _json(send, 413, _error(e.detail))

    def _foreign(self, headers: dict[str, str]) -> bool:
        """True when a browser says the request comes from another site (Origin, else Referer). API
        clients send neither; a page can forge neither."""
        source = headers.get("origin") or headers.get("referer")
        if not source:
            return False
        if source.rstrip("/") in self.cors_origins:
            return False
        parsed = urlsplit(source)
        if not parsed.scheme or not parsed.netloc:  # "null": sandboxed frames, file: pages
            return True
        if any(f"{parsed.scheme}://{parsed.netloc}" == o for o in self.cors_origins):
            return False
        return parsed.netloc.lower() != headers.get("host", "").strip().lower()

    def _note_refused_host(self, host: str) -> None:
        # Once per name: a scanner trying names must not fill the log.
        if host not in self._refused_hosts and len(self._refused_hosts) < 1000:
            self._refused_hosts.add(host)
            log.warning("Refused requests for host %r (answered: %s; add names with --allowed-host).",
                        host, ", ".join(sorted(self.allowed_hosts)))

    def _too_large(self) -> str:
        return f"The request is larger than the {_mb(self.max_body)} limit."


async def _whole_body(receive: Any, limit: int) -> bytes | None:
    """The request's body, or None when it is over ``limit`` or the client went away."""
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return None
        chunks.append(msg.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not msg.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _file_outside(body: bytes, ui_dir: str) -> str | None:
    """The first file path in a UI event's JSON that is not inside the UI's upload folder (a server path, a
    URL to fetch), or None. Gradio's file values are objects with a ``path``."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: Gradio answers it
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            named = item.get("path")
            if isinstance(named, str) and not os.path.normpath(named).startswith(ui_dir + os.sep):
                return named
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _security_headers(path: str, present: list) -> list[tuple[bytes, bytes]]:
    have = {k.lower() for k, _ in present}
    csp = CSP_DOCS if path in ("/docs", "/redoc", "/docs/oauth2-redirect") else CSP_STUDIO
    wanted = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
              (b"content-security-policy", csp.encode()), (b"referrer-policy", b"same-origin"),
              (b"cross-origin-opener-policy", b"same-origin")]
    return [(k, v) for k, v in wanted if k not in have]


def _error(detail: str, field: str = "") -> dict[str, str]:
    """The one error shape of the API: a sentence, and the form field it is about (or "")."""
    return {"detail": detail, "field": field}


async def _refuse(send: Any, http: bool, status: int, detail: str) -> None:
    if not http:
        return await send({"type": "websocket.close", "code": 4000 + status})
    await _json(send, status, _error(detail))


async def _json(send: Any, status: int, body: dict, extra: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *_security_headers("", []), *(extra or [])]})
    await send({"type": "http.response.body", "body": data})
