"""Issue #7, security: auth beyond loopback, closed CORS, size and rate limits, no path escapes, and
render children bounded in time and memory."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from studio_support import LOCAL, NoRender, need_media, short_audio, wait_job

from lipdub.errors import ConfigError
from lipdub.media.limits import safe_name
from lipdub.studio.jobs.runner import LocalDispatcher
from lipdub.studio.jobs.service import Settings, Studio
from lipdub.studio.web.app import create_app
from lipdub.studio.web.security import TOKEN_FILE, parse_auth

pytestmark = pytest.mark.timeout(300)


def _app(data: Path, **kw) -> TestClient:
    settings = Settings(data_dir=data, device="cpu", workers=1, **kw)
    return TestClient(create_app(settings, Studio(settings, dispatcher=NoRender())), base_url=LOCAL)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("inputs")
    (photo,) = need_media("portrait_474.png")
    return {"audio": short_audio(tmp / "speech.wav", 1.0), "face": photo}


def _files(inputs, audio_name: str = "speech.wav", face_name: str = "p.png") -> list:
    return [("audio", (audio_name, inputs["audio"].read_bytes())), ("face", (face_name, inputs["face"].read_bytes()))]


def test_loopback_is_open_by_default(tmp_path) -> None:
    with _app(tmp_path / "d") as c:
        assert c.get("/api/v1/jobs").status_code == 200
    assert not (tmp_path / "d" / TOKEN_FILE).exists()


def test_beyond_loopback_a_token_is_generated_and_required(tmp_path, caplog) -> None:
    data = tmp_path / "d"
    with caplog.at_level("WARNING"), _app(data, host="0.0.0.0") as c:
        token_file = data / TOKEN_FILE
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) >= 24
        assert str(token_file) in caplog.text and token not in caplog.text  # the log names the file only
        for path in ("/api/v1/jobs", "/api/v1/storage", "/", "/docs", "/openapi.json", "/gradio_api/info", "/config",
                     "/gradio_api/file=/etc/passwd", "/gradio_api/queue/data?session_hash=x", "/theme.css"):
            assert c.get(path).status_code == 401, path
        for path in ("/gradio_api/upload", "/gradio_api/queue/join", "/gradio_api/call/run", "/gradio_api/run/run"):
            assert c.post(path, json={}).status_code == 401, path
        assert c.post("/api/v1/jobs", files=[("audio", ("a.wav", b"x"))]).status_code == 401
        # Health stays public but says nothing beyond "ok".
        assert c.get("/api/v1/health").json() == {"status": "ok"}
        auth = {"Authorization": f"Bearer {token}"}
        assert c.get("/api/v1/jobs", headers=auth).status_code == 200
        assert "device" in c.get("/api/v1/health", headers=auth).json()
        assert c.get("/api/v1/jobs", headers={"Authorization": "Bearer wrong-token-123"}).status_code == 401
        # A browser opens /?token=... once and then rides on a session cookie, which is not the token.
        r = c.get(f"/?token={token}")
        cookie = r.headers.get("set-cookie", "")
        assert r.status_code == 200 and cookie.startswith("lipdub_session=") and token not in cookie
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get("/api/v1/jobs").status_code == 200
        c.cookies.clear()
        c.cookies.set("lipdub_token", token)  # the token itself as a cookie is no longer taken
        assert c.get("/api/v1/jobs").status_code == 401
        c.cookies.clear()
        c.cookies.set("lipdub_session", cookie.split(";")[0].split("=", 1)[1][:-4] + "0000")  # forged
        assert c.get("/api/v1/jobs").status_code == 401
        c.cookies.clear()
    caplog.clear()
    with caplog.at_level("WARNING"), _app(data, host="0.0.0.0"):
        assert (data / TOKEN_FILE).read_text().strip() == token  # kept across restarts
        assert token not in caplog.text  # printed on the first start only


def test_user_and_password(tmp_path) -> None:
    with _app(tmp_path / "d", host="0.0.0.0", auth="ana:s3cret pass") as c:
        r = c.get("/api/v1/jobs")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        good = base64.b64encode(b"ana:s3cret pass").decode()
        bad = base64.b64encode(b"ana:nope").decode()
        assert c.get("/api/v1/jobs", headers={"Authorization": f"Basic {good}"}).status_code == 200
        assert c.get("/api/v1/jobs", headers={"Authorization": f"Basic {bad}"}).status_code == 401
        assert c.get("/", headers={"Authorization": f"Basic {good}"}).status_code == 200
    assert not (tmp_path / "d" / TOKEN_FILE).exists()


def test_parse_auth() -> None:
    assert parse_auth("token:abcdefgh12345678").token == "abcdefgh12345678"
    assert parse_auth("abcdefgh12345678").token == "abcdefgh12345678"
    a = parse_auth("user:pa:ss-word")
    assert (a.user, a.password) == ("user", "pa:ss-word")


@pytest.mark.parametrize("spec", ["x", "token:short", "token:abcdefgh1234", "abcdefgh", "user:pa:ss", "user:"])
def test_short_secrets_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_auth(spec)


def test_a_short_token_stops_the_server_with_one_sentence(tmp_path) -> None:
    import subprocess

    from studio_support import REPO

    r = subprocess.run([sys.executable, str(REPO / "app.py"), "--auth", "x", "--device", "cpu",
                        "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "[ERROR] An auth token needs at least 16 characters" in r.stderr and "Traceback" not in r.stderr


def test_a_short_token_file_is_refused(tmp_path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / TOKEN_FILE).write_text("abc\n")
    with pytest.raises(ConfigError, match="shorter than 16"):
        _app(data, host="0.0.0.0")


def test_the_token_goes_to_a_terminal_once_and_never_to_the_log(tmp_path, caplog, monkeypatch) -> None:
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    data = tmp_path / "d"
    with caplog.at_level("DEBUG"), _app(data, host="0.0.0.0"):
        pass
    token = (data / TOKEN_FILE).read_text().strip()
    assert terminal.getvalue().count(token) == 1
    assert token not in caplog.text
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: a log file, say
    shutil.rmtree(data)
    with caplog.at_level("DEBUG"), _app(data, host="0.0.0.0"):
        pass
    assert (data / TOKEN_FILE).read_text().strip() not in caplog.text + sys.stderr.getvalue()


@pytest.mark.parametrize("host", ["", " ", "0.0.0.0", "::", "[::]", "studio.example", "192.168.1.5"])
def test_an_empty_wildcard_or_public_host_needs_auth(tmp_path, host: str) -> None:
    with _app(tmp_path / "d", host=host, allowed_hosts=("*",)) as c:
        assert c.get("/api/v1/storage").status_code == 401
        assert c.get("/").status_code == 401
    assert (tmp_path / "d" / TOKEN_FILE).exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_addresses_stay_open(tmp_path, host: str) -> None:
    with _app(tmp_path / "d", host=host) as c:
        assert c.get("/api/v1/storage").status_code == 200


def test_cors_is_closed_by_default(tmp_path) -> None:
    with _app(tmp_path / "d") as c:
        pre = c.options("/api/v1/jobs", headers={"Origin": "https://evil.example",
                                                 "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers
        r = c.get("/api/v1/jobs", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with _app(tmp_path / "d2", cors_origins=("https://ok.example",)) as c:
        r = c.get("/api/v1/jobs", headers={"Origin": "https://ok.example"})
        assert r.headers.get("access-control-allow-origin") == "https://ok.example"


def test_request_size_is_capped_while_streaming(tmp_path, inputs) -> None:
    with _app(tmp_path / "d", max_request_mb=1) as c:
        big = [("audio", ("big.wav", b"\0" * (2 << 20))), ("face", ("p.png", b"x"))]
        r = c.post("/api/v1/jobs", files=big)
        assert r.status_code == 413 and "1 MB" in r.json()["detail"]

        def stream():  # no Content-Length: only counting the body as it arrives can stop it
            for _ in range(64):
                yield b"\0" * 65536

        r = c.post("/api/v1/jobs", content=stream(),
                   headers={"Content-Type": "multipart/form-data; boundary=xyz"})
        assert r.status_code == 413
        assert c.get("/api/v1/health").json()["status"] == "ok"
        assert c.post("/api/v1/jobs", files=_files(inputs)).status_code == 202  # small ones still pass
    assert not list((tmp_path / "d" / "tmp").iterdir())


def test_submissions_are_rate_limited(tmp_path) -> None:
    with _app(tmp_path / "d", rate_per_minute=6, rate_burst=3) as c:
        codes = [c.post("/api/v1/jobs", files=[("audio", ("a.txt", b"no"))]).status_code for _ in range(5)]
        assert codes[:3] == [422, 422, 422] and codes[3:] == [429, 429]
        r = c.post("/api/v1/jobs", files=[("audio", ("a.txt", b"no"))])
        assert int(r.headers["retry-after"]) >= 1
        assert c.get("/api/v1/jobs").status_code == 200  # reading is not limited


@pytest.mark.parametrize("name", ["../../../../tmp/evil.wav", "..\\..\\evil.wav", "/etc/passwd", "a/../../b.wav",
                                  "....//....//x.wav", "\x00nul.wav", "..", "中文/../演讲 😀.wav"])
def test_traversal_names_are_neutralised(tmp_path, inputs, name: str) -> None:
    data = tmp_path / "d"
    before = {str(p) for p in tmp_path.parent.rglob("*")}
    with _app(data) as c:
        r = c.post("/api/v1/jobs", files=_files(inputs, audio_name=name, face_name=name.replace(".wav", ".png")))
        assert r.status_code == 202, r.text
        job = c.get(r.json()["url"]).json()
        for shown in (job["audio_name"], job["face_name"]):
            assert "/" not in shown and "\\" not in shown and ".." not in shown and "\x00" not in shown
    new = {str(p) for p in tmp_path.parent.rglob("*")} - before
    assert all(p.startswith(str(data)) for p in new), new


def test_safe_name_keeps_unicode() -> None:
    assert safe_name("中文 演讲.wav") == "中文 演讲.wav"
    assert safe_name("C:\\Users\\me\\voix été.mp3") == "voix été.mp3"
    assert safe_name("../..") == "upload" and safe_name("", "audio") == "audio"


def test_no_server_side_paths(tmp_path) -> None:
    with _app(tmp_path / "d") as c:
        r = c.post("/api/v1/jobs", data={"audio": "/etc/passwd", "face": "/etc/hostname"})
        assert r.status_code == 422
        assert c.get("/api/v1/jobs").json()["total"] == 0
        for path in ("/gradio_api/file=/etc/passwd", "/file=/etc/passwd", "/api/v1/jobs/..%2F..%2Fetc/log"):
            r = c.get(path)
            assert r.status_code in (400, 403, 404, 405), (path, r.status_code)
            assert "root:" not in r.text


def _slow_child(job_id: str, token: str, device: str) -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(60)"]


def _hungry_child(job_id: str, token: str, device: str) -> list[str]:
    return [sys.executable, "-c", "import time; b = bytearray(600 << 20); b[::4096] = b'x' * len(b[::4096]); "
            "time.sleep(60)"]


@pytest.mark.parametrize("child,limits,words", [
    (_slow_child, {"timeout_s": 2.0}, "longer than the 2 s limit"),
    (_hungry_child, {"memory_mb": 300.0}, "over the 300 MB limit"),
])
def test_render_children_are_bounded(tmp_path, inputs, child, limits, words) -> None:
    """A pathological render is killed, its job failed with the reason, and the next job runs."""
    settings = Settings(data_dir=tmp_path / "d", device="cpu", workers=1)
    studio = Studio(settings, dispatcher=NoRender())
    studio.dispatcher = LocalDispatcher(studio.store, studio.storage, workers=1, poll_s=0.2, child_cmd=child,
                                        **limits)
    t0 = time.monotonic()
    with TestClient(create_app(settings, studio), base_url=LOCAL) as c:
        first = c.post("/api/v1/jobs", files=_files(inputs)).json()["id"]
        second = c.post("/api/v1/jobs", files=_files(inputs)).json()["id"]
        job = wait_job(c, first, timeout=60)
        assert job["status"] == "failed" and words in job["error"], job
        assert words in c.get(f"/api/v1/jobs/{first}/log").text
        nxt = wait_job(c, second, until=("running", "failed"), timeout=60)
        assert nxt["status"] in ("running", "failed")
        assert c.get("/api/v1/health").json()["status"] == "ok"
    assert time.monotonic() - t0 < 60
    assert os.path.isdir(tmp_path / "d")


def test_full_disk_gives_a_clear_error_and_leaves_nothing(tmp_path, inputs, monkeypatch) -> None:
    import errno

    import lipdub
    import lipdub.studio.jobs.storage as storage_mod
    from lipdub.studio.jobs.runner import run_job

    def no_space(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    data = tmp_path / "d"
    with _app(data) as c, monkeypatch.context() as m:
        m.setattr(storage_mod.os, "fsync", no_space)
        r = c.post("/api/v1/jobs", files=_files(inputs))
        assert r.status_code == 507 and "disk is full" in r.json()["detail"]
        assert not list((data / "tmp").iterdir()) and not list((data / "uploads").rglob("*.*"))
        assert c.get("/api/v1/health").json()["status"] == "ok"

    # The disk fills during a render: the job fails with the reason, the partial MP4 is removed.
    settings = Settings(data_dir=data, device="cpu")
    studio = Studio(settings, dispatcher=NoRender())
    job = studio.submit(studio.add_upload_path(inputs["audio"], "audio"), studio.add_upload_path(inputs["face"], "face"))
    claimed = studio.store.claim_next("test")
    assert claimed is not None and claimed.id == job.id

    def filling(audio, face, out, **_kw):  # noqa: ANN001, ANN202
        Path(out).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lipdub, "generate", filling)
    assert run_job(job.id, studio.store, studio.storage, token=claimed.run_token or "") == "failed"
    failed = studio.store.get(job.id)
    assert failed is not None and "disk is full" in (failed.error or "")
    assert not list(studio.storage.job_dir(job.id).glob("*.mp4"))
    studio.stop()


# -- Issue #24: browser safety, bounded requests, names, one error shape -------------------------------


def test_cross_site_requests_are_refused(tmp_path, inputs) -> None:
    with _app(tmp_path / "d") as c:
        for headers in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/page"},
                        {"Origin": "null"}, {"Origin": "http://localhost.evil.example"},
                        {"Origin": "http://localhost:9999"}):
            r = c.post("/api/v1/jobs", files=_files(inputs), headers=headers)
            assert r.status_code == 403 and set(r.json()) == {"detail", "field"}, (headers, r.text)
            assert c.delete("/api/v1/jobs/abc", headers=headers).status_code == 403
            assert c.post("/gradio_api/queue/join", json={}, headers=headers).status_code == 403
            assert c.post("/gradio_api/upload", files=[("files", ("a.wav", b"x"))], headers=headers).status_code == 403
        assert c.get("/api/v1/jobs").json()["total"] == 0
        # The studio's own page, and API clients that send no Origin, pass.
        assert c.post("/api/v1/jobs", files=_files(inputs), headers={"Origin": "http://localhost"}).status_code == 202
        assert c.post("/api/v1/jobs", files=_files(inputs),
                      headers={"Referer": "http://localhost/?__theme=dark"}).status_code == 202
        assert c.post("/api/v1/jobs", files=_files(inputs)).status_code == 202
        assert c.get("/api/v1/jobs", headers={"Origin": "https://evil.example"}).status_code == 200  # reading
    with _app(tmp_path / "d2", cors_origins=("https://ok.example",)) as c:
        r = c.post("/api/v1/jobs", files=_files(inputs), headers={"Origin": "https://ok.example"})
        assert r.status_code == 202


def test_only_allowed_host_names_are_answered(tmp_path) -> None:
    with _app(tmp_path / "d") as c:
        for host in ("evil.example", "rebind.attacker.test:7860", "127.0.0.1.nip.io"):
            for path in ("/", "/api/v1/jobs", "/gradio_api/info", "/gradio_api/file=/etc/passwd"):
                r = c.get(path, headers={"Host": host})
                assert r.status_code == 400 and "--allowed-host" in r.json()["detail"], (host, path)
            assert c.get("/api/v1/health", headers={"Host": host}).json() == {"status": "ok"}
        for host in ("localhost", "localhost:7860", "127.0.0.1:7860", "[::1]:7860", "LOCALHOST"):
            assert c.get("/api/v1/jobs", headers={"Host": host}).status_code == 200, host
    with _app(tmp_path / "d2", allowed_hosts=("studio.lan",)) as c:
        assert c.get("/api/v1/jobs", headers={"Host": "studio.lan:7860"}).status_code == 200
        assert c.get("/api/v1/jobs", headers={"Host": "other.lan"}).status_code == 400
    with _app(tmp_path / "d3", host="192.168.7.7", auth="token:" + "k" * 20) as c:
        auth = {"Authorization": "Bearer " + "k" * 20}
        assert c.get("/api/v1/jobs", headers={"Host": "192.168.7.7:7860", **auth}).status_code == 200


def test_security_headers(tmp_path) -> None:
    with _app(tmp_path / "d") as c:
        for path in ("/", "/api/v1/jobs", "/api/v1/jobs/nope", "/docs"):
            h = c.get(path).headers
            assert h["x-content-type-options"] == "nosniff", path
            assert h["x-frame-options"] == "DENY", path
            assert "frame-ancestors 'none'" in h["content-security-policy"], path


def test_zip_ids_are_deduplicated_and_capped(tmp_path, inputs, monkeypatch) -> None:
    with _app(tmp_path / "d") as c:
        job_id = c.post("/api/v1/jobs", files=_files(inputs)).json()["id"]
        studio = c.app.state.studio
        asked: list[int] = []
        real_zip = studio.zip_jobs
        monkeypatch.setattr(studio, "zip_jobs", lambda jobs: asked.append(len(jobs)) or real_zip(jobs))
        r = c.get("/api/v1/zip", params=[("ids", job_id)] * 400)
        assert r.status_code == 422 and asked == [1]  # one job, zipped once (it has no result yet: 422)
        r = c.get("/api/v1/zip", params={"ids": ",".join([job_id] * 300)})
        assert asked == [1, 1]
        r = c.get("/api/v1/zip", params=[("ids", f"j{i}") for i in range(201)])
        assert r.status_code == 422 and r.json()["field"] == "ids" and "at most 200" in r.json()["detail"]
        assert asked == [1, 1]


def test_paging_out_of_range_is_a_422(tmp_path) -> None:
    with _app(tmp_path / "d") as c:
        for params in ({"page": 9223372036854775807}, {"page": 10**30}, {"page": 0}, {"page_size": 10**6},
                       {"page": "x"}):
            r = c.get("/api/v1/jobs", params=params)
            assert r.status_code == 422, (params, r.text)
            body = r.json()
            assert set(body) == {"detail", "field"} and body["field"] in params, body
        assert c.get("/api/v1/jobs", params={"page": 1_000_000}).json()["items"] == []


def test_one_error_shape(tmp_path, inputs) -> None:
    with _app(tmp_path / "d", rate_per_minute=60, rate_burst=4) as c:
        r = c.post("/api/v1/jobs", files=[("audio", ("a.wav", inputs["audio"].read_bytes()))])
        assert r.status_code == 422 and r.json() == {"detail": "The field 'face' is required.", "field": "face"}
        for r in (c.get("/api/v1/jobs/nope"), c.post("/api/v1/jobs/nope/cancel"), c.get("/api/v1/batches/x/zip"),
                  c.post("/api/v1/jobs", files=[("audio", ("a.wav", inputs["audio"].read_bytes())),
                                                ("face", ("f.png", inputs["audio"].read_bytes()))])):
            assert r.status_code >= 400 and set(r.json()) == {"detail", "field"}, r.text
        codes = [c.post("/api/v1/jobs", files=[("audio", ("a.wav", b"x"))]).status_code for _ in range(4)]
        r = c.post("/api/v1/jobs", files=[("audio", ("a.wav", b"x"))])
        assert r.status_code == 429 and set(r.json()) == {"detail", "field"}, codes


def test_bidi_controls_are_stripped_from_names(tmp_path, inputs) -> None:
    assert safe_name("evil\u202egpj.exe") == "evilgpj.exe"
    assert safe_name("\u2066a\u2067b\u2068c\u2069\u200e\u200f\u061c.wav") == "abc.wav"
    with _app(tmp_path / "d") as c:
        r = c.post("/api/v1/jobs", files=_files(inputs, audio_name="speech\u202evaw.exe", face_name="p\u202egnp.png"))
        job = c.get(r.json()["url"]).json()
        assert job["audio_name"] == "speechvaw.exe" and job["face_name"] == "pgnp.png"


async def _post_streaming(app, path: str, body: bytes, content_type: str, chunk: int = 65536) -> tuple[int, int]:
    """POST ``body`` to the ASGI app in ``chunk``-sized reads, as a server does; return (status, bytes read)."""
    sent = 0
    status = 0

    async def receive() -> dict:
        nonlocal sent
        part = body[sent:sent + chunk]
        sent += len(part)
        return {"type": "http.request", "body": part, "more_body": sent < len(body)}

    async def send(msg: dict) -> None:
        nonlocal status
        if msg["type"] == "http.response.start":
            status = msg["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 7860),
             "headers": [(b"host", b"localhost"), (b"content-type", content_type.encode())]}
    await app(scope, receive, send)
    return status, sent


def test_an_upload_over_its_limit_is_refused_while_it_streams(tmp_path, inputs) -> None:
    import anyio

    limit = 1 << 20
    boundary = "lipdubtest"
    big = b"\0" * (8 * limit)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"big.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
    data = tmp_path / "d"
    settings = Settings(data_dir=data, device="cpu", workers=1, max_upload_mb=1, max_request_mb=100)
    app = create_app(settings, Studio(settings, dispatcher=NoRender()))
    status, read = anyio.run(_post_streaming, app, "/api/v1/jobs", body, f"multipart/form-data; boundary={boundary}")
    assert status == 413
    assert read <= limit + 2 * 65536, read  # the limit plus the read that crossed it (and the part's headers)
    assert not list((data / "tmp").iterdir()) and not list((data / "uploads").rglob("*.*"))
    # Under the limit, the same route still takes the files.
    with _app(tmp_path / "d2", max_upload_mb=1) as c:
        assert c.post("/api/v1/jobs", files=_files(inputs)).status_code == 202


def test_ui_uploads_live_in_the_data_dir_are_rate_limited_and_swept(tmp_path, inputs) -> None:
    data = tmp_path / "d"
    with _app(data, rate_per_minute=6, rate_burst=2) as c:
        codes = []
        for _ in range(6):
            r = c.post("/gradio_api/upload", files=[("files", ("s.wav", inputs["audio"].read_bytes()))])
            codes.append(r.status_code)
        assert codes[:4] == [200] * 4 and codes[4:] == [429, 429], codes
        studio = c.app.state.studio
        kept = [p for p in (data / "gradio").rglob("*") if p.is_file()]
        assert kept and all(p.read_bytes() == inputs["audio"].read_bytes() for p in kept)
        assert studio.usage()["uploads_bytes"] >= kept[0].stat().st_size
        partial = data / "gradio" / "tmpabandoned"  # an upload cut off half-way
        partial.write_bytes(b"x")
        old = time.time() - 2 * 3600
        for p in [*kept, partial]:
            os.utime(p, (old, old))
        assert studio.sweep_ui_uploads() == len(kept) + 1
        assert not [p for p in (data / "gradio").rglob("*") if p.is_file()]


class _InProcessServer:
    """The app under uvicorn in a thread: a real HTTP server whose studio renders nothing."""

    def __init__(self, app) -> None:  # noqa: ANN001
        import socket
        import threading

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):  # noqa: ANN204
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("in-process server did not start")

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.server.should_exit = True
        self.thread.join(30)


def _ui_run(c, files: list[dict], fn: str = "run") -> str:  # noqa: ANN001
    """Press Generate through Gradio's HTTP API and return the first thing the page would show."""
    event = c.post(f"/gradio_api/call/{fn}", json={"data": [*files, "fast", "auto", True]}).json()["event_id"]
    with c.stream("GET", f"/gradio_api/call/{fn}/{event}", timeout=30) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                return line
    return ""


def _ui_upload(c, path: Path) -> dict:  # noqa: ANN001
    (stored,) = c.post("/gradio_api/upload", files=[("files", (path.name, path.read_bytes()))]).json()
    return {"path": stored, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def test_ui_submissions_share_the_rate_limit(tmp_path, inputs) -> None:
    import httpx

    settings = Settings(data_dir=tmp_path / "d", device="cpu", workers=1, rate_per_minute=6, rate_burst=3)
    with _InProcessServer(create_app(settings, Studio(settings, dispatcher=NoRender()))) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        files = [_ui_upload(c, inputs["audio"]), _ui_upload(c, inputs["face"])]
        assert "queued" in _ui_run(c, files)
        assert [c.post("/api/v1/jobs", files=_files(inputs)).status_code for _ in range(2)] == [202, 202]
        assert "Too many submissions" in _ui_run(c, files)  # the UI's press takes the same bucket
        assert "Too many submissions" in _ui_run(c, [[files[0]], [files[1]]], fn="run_1")
        assert c.post("/api/v1/jobs", files=_files(inputs)).status_code == 429
        assert c.get("/api/v1/jobs").json()["total"] == 3


def test_ui_pages_following_renders_do_not_starve_the_api(tmp_path, inputs) -> None:
    """60 pages stay open, each following a job that never ends (nothing renders here). The API (health,
    status, cancel) and another user's page must still answer at once."""
    import threading

    import httpx

    pages = 60
    settings = Settings(data_dir=tmp_path / "d", device="cpu", workers=1, rate_per_minute=0)
    stop = threading.Event()
    firsts: list[str] = []

    def follow(files: list[dict]) -> None:
        with httpx.Client(base_url=srv.url, timeout=120) as own:
            event = own.post("/gradio_api/call/run", json={"data": [*files, "fast", "auto", True]}).json()
            with own.stream("GET", f"/gradio_api/call/run/{event['event_id']}") as s:
                first = True
                for line in s.iter_lines():
                    if first and line.startswith("data:"):
                        firsts.append(line)
                        first = False
                    if stop.is_set():
                        return

    with _InProcessServer(create_app(settings, Studio(settings, dispatcher=NoRender()))) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        files = [_ui_upload(c, inputs["audio"]), _ui_upload(c, inputs["face"])]
        threads = [threading.Thread(target=follow, args=(files,), daemon=True) for _ in range(pages)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(firsts) < pages and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            assert len(firsts) == pages and all("queued" in f for f in firsts), (len(firsts), firsts[:2])
            time.sleep(2)  # every page is in its follow loop, its stream open
            jobs = c.get("/api/v1/jobs", params={"page_size": 100}).json()
            assert jobs["total"] == pages
            worst = 0.0
            for _ in range(5):
                t0 = time.monotonic()
                with httpx.Client(base_url=srv.url, timeout=10) as fresh:
                    assert fresh.get("/api/v1/health").json()["queued"] == pages
                    assert fresh.get(f"/api/v1/jobs/{jobs['items'][0]['id']}").status_code == 200
                worst = max(worst, time.monotonic() - t0)
            t0 = time.monotonic()
            r = httpx.post(f"{srv.url}/api/v1/jobs/{jobs['items'][1]['id']}/cancel", timeout=10)
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
            # Another user's page: picking a file is checked at once, not after the others' renders.
            event = c.post("/gradio_api/call/describe", json={"data": [[files[0]], None]}).json()["event_id"]
            answer = c.get(f"/gradio_api/call/describe/{event}", timeout=10).text
            assert "**OK:**" in answer, answer
            worst = max(worst, time.monotonic() - t0)
            assert worst < 3.0, worst
        finally:
            stop.set()
            # The pages go away; their streams end with the server.
