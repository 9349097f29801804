"""Issue #7, security: auth beyond loopback, closed CORS, size and rate limits, no path escapes, and
render children bounded in time and memory."""

from __future__ import annotations

import base64
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from studio_support import NoRender, need_media, short_audio, wait_job

from lipdub.jobs.runner import LocalDispatcher
from lipdub.jobs.service import Settings, Studio
from lipdub.media.limits import safe_name
from lipdub.web.app import create_app
from lipdub.web.security import TOKEN_FILE, parse_auth

pytestmark = pytest.mark.timeout(300)


def _app(data: Path, **kw) -> TestClient:
    settings = Settings(data_dir=data, device="cpu", workers=1, **kw)
    return TestClient(create_app(settings, Studio(settings, dispatcher=NoRender())))


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
        assert token in caplog.text  # announced once, with instructions
        for path in ("/api/v1/jobs", "/api/v1/storage", "/", "/docs", "/openapi.json", "/gradio_api/info"):
            assert c.get(path).status_code == 401, path
        assert c.post("/api/v1/jobs", files=[("audio", ("a.wav", b"x"))]).status_code == 401
        # Health stays public but says nothing beyond "ok".
        assert c.get("/api/v1/health").json() == {"status": "ok"}
        auth = {"Authorization": f"Bearer {token}"}
        assert c.get("/api/v1/jobs", headers=auth).status_code == 200
        assert "device" in c.get("/api/v1/health", headers=auth).json()
        assert c.get("/api/v1/jobs", headers={"Authorization": "Bearer wrong-token-123"}).status_code == 401
        # A browser opens /?token=... once and then rides on the cookie.
        r = c.get(f"/?token={token}")
        assert r.status_code == 200 and "lipdub_token" in r.headers.get("set-cookie", "")
        assert c.get("/api/v1/jobs").status_code == 200
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
    assert parse_auth("token:abcdefgh1234").token == "abcdefgh1234"
    a = parse_auth("user:pa:ss")
    assert (a.user, a.password) == ("user", "pa:ss")
    with pytest.raises(ValueError):
        parse_auth("token:short")


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
    with TestClient(create_app(settings, studio)) as c:
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
    import lipdub.jobs.storage as storage_mod
    from lipdub.jobs.runner import run_job

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
