"""Issue #24, item 1: the UI's Gradio API, driven over HTTP as an attacker would, with server paths in every
file input of every Gradio function. Nothing outside the files uploaded through the UI may be read,
copied or served, no job may come of it, and the database stays intact."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import uuid
from pathlib import Path

import httpx
import pytest
from studio_support import Server, need_media, short_audio, wait_job

pytestmark = pytest.mark.timeout(900)


def _sse_events(text: str) -> list[tuple[str, str]]:
    events, name = [], "message"
    for line in text.splitlines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            events.append((name, line[5:].strip()))
    return events


def _call(c: httpx.Client, api_name: str, data: list) -> str:
    """``/gradio_api/call/<name>``: queue the call, then read its event stream to the end."""
    r = c.post(f"/gradio_api/call/{api_name}", json={"data": data})
    if r.status_code != 200:
        return r.text
    r = c.get(f"/gradio_api/call/{api_name}/{r.json()['event_id']}", timeout=60)
    return r.text


def _queue_join(c: httpx.Client, fn_index: int, data: list) -> str:
    """What the browser page does: join the queue, then follow the session's stream until the call ends."""
    session = uuid.uuid4().hex[:11]
    r = c.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                               "event_data": None, "trigger_id": None})
    if r.status_code != 200:
        return r.text
    seen = []
    with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}, timeout=60) as s:
        for line in s.iter_lines():
            seen.append(line)
            if '"process_completed"' in line or '"close_stream"' in line:
                break
    return "\n".join(seen)


def _file_data(path: Path | str) -> dict:
    return {"path": str(path), "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree_hashes(*roots: Path) -> list[tuple[str, Path]]:
    """(content hash, path) of every file under ``roots``."""
    found = []
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                try:
                    found.append((_sha(p), p))
                except OSError:
                    pass
    return found


def _age_atime(path: Path) -> float:
    """Set the access time before the modification time, so that the next read updates it (relatime)."""
    st = path.stat()
    os.utime(path, (st.st_mtime - 3600, st.st_mtime))
    return path.stat().st_atime


def test_gradio_api_reads_copies_and_serves_only_its_own_uploads(tmp_path) -> None:
    photo, = need_media("portrait_474.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    secrets = {"speech": short_audio(outside / "secret_speech.wav", 1.0),
               "face": shutil.copy(photo, outside / "secret_face.png"),
               "text": outside / "secret.txt"}
    secrets["text"].write_text("root:x:0:0:SENTINEL-" + uuid.uuid4().hex + "\n")
    secrets = {k: Path(v) for k, v in secrets.items()}
    data, server_tmp = tmp_path / "data", tmp_path / "server-tmp"
    server_tmp.mkdir()
    data.mkdir()
    token_file = data / "auth_token"  # on loopback the server never reads it; nor may Gradio
    token_file.write_text("TOKEN-SENTINEL-" + uuid.uuid4().hex + "\n")
    os.chmod(token_file, 0o600)

    server = Server(data, env={"TMPDIR": str(server_tmp)}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            # A stored upload to aim at: the speech of a request refused for its face (kept an hour, no job).
            r = c.post("/api/v1/jobs", files=[("audio", ("mine.wav", secrets["speech"].read_bytes())),
                                              ("face", ("mine.png", b"not a picture"))])
            assert r.status_code == 422, r.text
            stored = sorted((data / "uploads").rglob("*.*"))
            assert stored
            db = data / "lipdub.db"
            db_files = {p: p.stat().st_ino for p in (db, data / "lipdub.db-wal", data / "lipdub.db-shm")
                        if p.exists()}
            assert db in db_files

            targets = [*secrets.values(), token_file, *db_files, *stored, Path("/etc/passwd"),
                       data / "uploads" / ".." / "lipdub.db", Path(str(outside) + "/../outside/secret.txt")]
            private = [*secrets.values(), token_file, *stored]
            hashes = {_sha(p): p for p in {*secrets.values(), token_file, *stored}}
            # The access time of a file read again moves on; check that this filesystem records it.
            control = outside / "control.bin"
            control.write_bytes(b"control")
            before = _age_atime(control)
            control.read_bytes()
            atime_recorded = control.stat().st_atime != before
            atimes = {p: _age_atime(p) for p in private}

            info = c.get("/gradio_api/info").json()["named_endpoints"]
            config = c.get("/config").json()
            fn_index = {d["api_name"]: d["id"] for d in config["dependencies"]}
            with_files = {name.lstrip("/"): ep["parameters"] for name, ep in info.items()
                          if any(p["component"] == "File" for p in ep["parameters"])}
            assert {"run", "run_1", "describe", "describe_1"} <= set(with_files), with_files.keys()

            answers = []
            for api_name, params in with_files.items():
                for target in targets:
                    payload = []
                    for p in params:
                        if p["component"] != "File":
                            payload.append(p["parameter_default"] if p["parameter_has_default"]
                                           else p["example_input"])
                        elif p["python_type"]["type"].startswith("list"):
                            payload.append([_file_data(target)])
                        else:
                            payload.append(_file_data(target))
                    answers.append(_call(c, api_name, payload))
                    answers.append(_queue_join(c, fn_index[api_name], payload))
            # Every call was answered, none with a success.
            assert len(answers) == 2 * len(with_files) * len(targets)
            for text in answers:
                assert "**OK:**" not in text and "Job `" not in text and "Batch `" not in text, text[:500]

            # Nothing was read (checked first: the checks below read every file).
            if atime_recorded:
                read = [p for p, t in atimes.items() if p.stat().st_atime != t]
                assert not read, read
            # Nothing was copied: no file anywhere the server writes holds a private file's bytes. A stored
            # upload's pin (data/pins, a hard link kept until its request is recorded) is that upload itself.
            stored_inodes = {p.stat().st_ino for p in stored}
            copies = {h: p for h, p in _tree_hashes(data, server_tmp) if h in hashes and p != hashes[h]
                      and p not in stored and p.stat().st_ino not in stored_inodes}
            assert not copies, copies
            # Nothing is served: neither the targets nor anything in Gradio's folders.
            for target in [*targets, *(p for p in server_tmp.rglob("*") if p.is_file())]:
                r = c.get(f"/gradio_api/file={target}")
                assert r.status_code in (403, 404), (target, r.status_code)
            for h in hashes:
                assert all(h != hashlib.sha256(t.encode()).hexdigest() for t in answers)
            assert not any("SENTINEL-" in t for t in answers)
            assert c.get("/gradio_api/file=http://127.0.0.1:1/x").status_code == 404
            assert c.get(f"/gradio_api/proxy={server.url}/api/v1/storage").status_code == 404

            # No job came of it, and the database is whole: same files, intact, still taking jobs.
            assert c.get("/api/v1/jobs").json()["total"] == 0
            for p, inode in db_files.items():
                assert p.exists() and p.stat().st_ino == inode, p
            r = c.post("/api/v1/jobs", files=[("audio", ("again.wav", secrets["speech"].read_bytes())),
                                              ("face", ("again.png", photo.read_bytes()))])
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            assert c.get("/api/v1/jobs").json()["total"] == 1
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

            # The page's own way still works: a file uploaded through Gradio is accepted and checked.
            r = c.post("/gradio_api/upload", files=[("files", ("speech.wav", secrets["speech"].read_bytes()))])
            assert r.status_code == 200, r.text
            (uploaded,) = r.json()
            assert Path(uploaded).is_relative_to(data.resolve() / "gradio"), uploaded
            text = _call(c, "describe", [[_file_data(uploaded)], None])
            assert "**OK:**" in text and "secret_speech.wav" not in json.dumps(text), text[:500]

            # The job taken after the attack renders, the database keeps its files through it, and the job
            # is still there after a restart (before: the next render took the WAL with it, and jobs
            # accepted after that were lost).
            assert wait_job(c, job_id, timeout=600)["status"] == "done"
            for p, inode in db_files.items():
                assert p.exists() and p.stat().st_ino == inode, p
        server.stop()
        server.start()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.get(f"/api/v1/jobs/{job_id}").json()["status"] == "done"
    finally:
        server.stop()
    assert "SENTINEL" not in server.log()


def test_each_layer_refuses_a_file_the_page_did_not_upload(tmp_path) -> None:
    """Past the front door (the path is inside the UI's upload folder), Gradio refuses a link that leads out
    of it, and the handlers refuse a file that is there but was not uploaded through the page."""
    from fastapi.testclient import TestClient
    from studio_support import LOCAL, NoRender

    from lipdub.studio.jobs.service import Settings, Studio
    from lipdub.studio.web.app import create_app

    secret = short_audio(tmp_path / "secret.wav", 1.0)
    settings = Settings(data_dir=tmp_path / "d", device="cpu", workers=1)
    with TestClient(create_app(settings, Studio(settings, dispatcher=NoRender())), base_url=LOCAL) as c:
        ui_dir = c.app.state.studio.storage.ui_dir
        (ui_dir / "planted").mkdir(parents=True)
        link = ui_dir / "planted" / "link.wav"
        link.symlink_to(secret)
        placed = ui_dir / "planted" / "placed.wav"
        shutil.copy(secret, placed)
        before = _age_atime(secret)
        text = _call(c, "describe", [[_file_data(link)], None])
        assert "**OK:**" not in text and "error" in text, text
        assert secret.stat().st_atime == before
        text = _call(c, "describe", [[_file_data(placed)], None])
        assert "was not uploaded through this page" in text, text
        placed_face = shutil.copy(need_media("portrait_474.png")[0], ui_dir / "planted" / "face.png")
        text = _call(c, "run", [_file_data(placed), _file_data(placed_face), "fast", "auto", True])
        assert "was not uploaded through this page" in text, text
        assert c.get("/api/v1/jobs").json()["total"] == 0
        # The front door refuses what is outside the folder, or a URL to fetch, before Gradio sees it.
        for named in (str(secret), "https://example.com/a.wav", str(ui_dir / ".." / "lipdub.db")):
            r = c.post("/gradio_api/call/describe", json={"data": [[_file_data(named)], None]})
            assert r.status_code == 422 and "not uploaded through the studio's page" in r.json()["detail"], named
