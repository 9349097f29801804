"""The studio in a real browser: Playwright drives Debian's chromium through the Single, Batch and
History tabs with real media, checks that results play, and saves screenshots into docs/screenshots/."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from studio_support import REPO, Server, need_media, short_audio

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1800)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = REPO / "docs" / "screenshots"
RENDER_TIMEOUT_MS = 600_000

PLAYS = """(sel) => new Promise((resolve) => {
  const v = document.querySelector(sel);
  if (!v) return resolve(-1);
  const go = () => { v.muted = true; v.play().catch(() => {});
    setTimeout(() => resolve(v.duration > 0 && v.currentTime > 0 ? v.duration : 0), 1500); };
  if (v.readyState >= 1) go(); else v.addEventListener('loadedmetadata', go, {once: true});
})"""


@pytest.fixture(scope="module")
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1000})
        yield page
        browser.close()


def _upload(page, elem_id: str, paths: list[Path]) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files([str(p) for p in paths])


def _failed_job_with_a_long_error(data_dir: Path) -> tuple[str, str]:
    """A failed job recorded before the server starts (so no worker takes it): its id and its error."""
    from lipdub.studio.jobs.store import FAILED, JobStore, sqlite_url

    data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(sqlite_url(data_dir / "lipdub.db"))
    try:
        store.add_upload("a" * 64 + ".wav", "long.wav", 1)
        store.add_upload("f" * 64 + ".png", "long.png", 1)
        job = store.create_job("a" * 64 + ".wav", "f" * 64 + ".png", audio_name="long.wav", face_name="long.png")
        claimed = store.claim(job.id, "test")
        error = "The render failed: " + " ".join(f"detail{i}" for i in range(150)) + " END-OF-ERROR."
        store.finish(job.id, claimed.run_token, FAILED, error=error)
    finally:
        store.dispose()
    return job.id, error


def test_browser_single_batch_history(browser_page, tmp_path):
    page = browser_page
    photo, photo2, video = need_media("portrait_474.png", "portrait_624.jpg", "map_talk_844.mp4")
    speech = short_audio(tmp_path / "speech.wav", 2.5)
    failed_id, long_error = _failed_job_with_a_long_error(tmp_path / "data")
    server = Server(tmp_path / "data").start()
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page.goto(server.url + "/")
        banner = page.locator("#device-banner")
        banner.wait_for(timeout=60_000)
        assert "cpu" in banner.inner_text().lower()
        assert page.title() == "lipdub studio"
        assert page.locator("#studio-heading").inner_text() == "lipdub studio"

        # Single: a speech file and a real talking video, validated before submitting.
        broken = tmp_path / "broken.wav"
        broken.write_bytes(b"this is not audio")
        _upload(page, "single-audio", [broken])  # refused with a message before anything is submitted
        page.locator("#single-audio-msg").get_by_text("broken.wav is not a readable").wait_for(timeout=60_000)
        page.locator("#single-audio button[aria-label='Clear']").click()
        _upload(page, "single-audio", [speech])
        page.locator("#single-audio-msg").get_by_text("OK:").wait_for(timeout=60_000)
        _upload(page, "single-face", [video])
        page.locator("#single-face-msg").get_by_text("OK:").wait_for(timeout=60_000)
        page.click("#single-generate")
        page.locator("#single-player video").wait_for(timeout=RENDER_TIMEOUT_MS)
        assert page.evaluate(PLAYS, "#single-player video") > 0, "the result should play"
        status = page.locator("#single-status").inner_text()
        assert "done" in status, status
        job_id = re.search(r"Job\s+(\w+)", status).group(1)
        single_log = page.evaluate("async (u) => (await fetch(u)).text()", f"/api/v1/jobs/{job_id}/log")
        assert "Done" in single_log and "Feedback manager" not in single_log, single_log
        page.screenshot(path=str(SHOTS / "single.png"), full_page=True)

        # Batch: one speech x two photos, with per-item progress and a zip.
        page.get_by_role("tab", name="Batch").click()
        _upload(page, "batch-audios", [speech])
        _upload(page, "batch-faces", [photo, photo2])
        page.locator("#batch-check").get_by_text("2 job(s) will be queued").wait_for(timeout=60_000)
        page.click("#batch-generate")
        page.locator("#batch-status").get_by_text(re.compile(r"\d/2 - ")).first.wait_for(timeout=120_000)
        page.locator("#batch-status").get_by_text("2/2 done").wait_for(timeout=RENDER_TIMEOUT_MS)
        page.locator("#batch-results video").nth(1).wait_for(timeout=30_000)
        assert page.evaluate(PLAYS, "#batch-results video") > 0
        assert page.locator("#batch-status a", has_text="zip").count() == 1
        page.screenshot(path=str(SHOTS / "batch.png"), full_page=True)

        # History: all three jobs, thumbnails, the player and the log.
        page.get_by_role("tab", name="History").click()
        page.locator("#history-table").get_by_text(job_id).wait_for(timeout=60_000)
        assert page.locator("#history-gallery img").count() >= 3
        player = page.locator("#history-player video")
        player.wait_for(timeout=60_000)
        # Not black before it is played: the poster is the result's first frame.
        poster = player.get_attribute("poster")
        assert poster and page.evaluate("async (u) => (await fetch(u)).status", poster) == 200
        assert page.evaluate(PLAYS, "#history-player video") > 0
        assert "Done" in page.locator("#history-log textarea").input_value()
        # Cancel on a finished job says so.
        page.get_by_role("button", name="Cancel job").click()
        page.locator("#history-info").get_by_text("Nothing to cancel").wait_for(timeout=30_000)
        # A long error stays within the table (cut short there) and is shown whole in the job's details.
        table = page.locator("#history-table")
        table.get_by_text(failed_id).wait_for(timeout=30_000)
        assert "END-OF-ERROR" not in table.inner_text()
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 1360
        page.locator("#history-job input").fill(failed_id)
        page.locator("#history-job input").press("Enter")
        page.locator("#history-info").get_by_text("END-OF-ERROR").wait_for(timeout=30_000)
        assert long_error.split(": ", 1)[1][:200] in page.locator("#history-info").inner_text()
        assert "Disk:" in page.locator("#history-usage").inner_text()
        page.locator("#history-batch-zip a", has_text="as zip").wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "history.png"), full_page=True)
    finally:
        server.stop()
