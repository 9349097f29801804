"""The web UI (Gradio Blocks): Single, Batch and History tabs over the same :class:`Studio` as the API.

Results are played and downloaded straight from the REST routes (``/api/v1/jobs/{id}/result``), so
the UI never copies videos around and a page reload loses nothing: jobs live in the store.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import gradio as gr

from lipdub.errors import InputError
from lipdub.media.limits import safe_name
from lipdub.studio.jobs.service import (
    AUDIO,
    FACE,
    UI_UPLOAD_TTL_S,
    Studio,
    ValidationError,
    check_media,
    engine_names,
    missing_engine_note,
    quality_names,
)
from lipdub.studio.jobs.store import DONE, FINISHED, Job
from lipdub.studio.web.api import MAX_PAGE
from lipdub.studio.web.security import RateLimiter

log = logging.getLogger(__name__)

POLL_S = 1.0
# Every format the README lists, by extension: the browser's picker and Gradio's own check of an upload
# go by it (Gradio's "video" category misses what the system calls audio/3gpp, for one).
VIDEO_EXTENSIONS = [".mp4", ".mov", ".mkv", ".avi", ".webm", ".flv", ".wmv", ".m4v", ".3gp"]
AUDIO_TYPES = [".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".wma", ".aiff", ".aif",
               *VIDEO_EXTENSIONS]  # a video's sound track is speech too
FACE_TYPES = ["video", "image", *VIDEO_EXTENSIONS, ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"]
PAGE_SIZE = 12
# A failed job's status cell shows this much of its error (the job's details show the rest): a long error
# otherwise widens the History table until its columns leave the screen.
TABLE_TEXT_CHARS = 80
T = TypeVar("T")

CSS = """
.lipdub-banner {padding: 8px 14px; border-radius: 8px; margin-bottom: 4px;}
.lipdub-banner.cpu {background: #fff4e5; color: #663c00;}
.lipdub-banner.gpu {background: #e8f5e9; color: #1b5e20;}
.lipdub-videos {display: flex; flex-wrap: wrap; gap: 12px;}
.lipdub-videos figure {margin: 0; width: 260px;}
.lipdub-videos video {width: 260px; border-radius: 6px; background: #000;}
.lipdub-videos figcaption {font-size: 12px; word-break: break-all;}
.lipdub-heading {margin: 4px 0 0 0; font-size: 1.6em;}
.lipdub-tagline {margin: 0 0 6px 0; opacity: 0.8;}
#history-table td {white-space: normal; overflow-wrap: anywhere;}
"""


def _banner(studio: Studio) -> str:
    desc = html.escape(studio.device_description)
    workers = getattr(studio.dispatcher, "workers", 1)
    if studio.device_kind == "cpu":
        return (f"<div class='lipdub-banner cpu' id='device-banner'><b>Device: {desc}</b> &middot; {workers} "
                "worker(s) &middot; No GPU in use: rendering runs on the CPU, which is much slower than on an "
                "NVIDIA GPU (expect several seconds per second of video).</div>")
    return (f"<div class='lipdub-banner gpu' id='device-banner'><b>Device: {desc}</b> &middot; {workers} "
            "worker(s) &middot; GPU rendering.</div>")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _status_line(job: Job) -> str:
    if job.status == "running":
        eta = job.eta_seconds()
        tail = f", about {eta:.0f} s left" if eta is not None else ""
        return f"{job.stage} {job.progress * 100:.0f}%{tail}"
    if job.status == "failed":
        return f"failed: {job.error or 'unknown error'}"
    return job.status


def _shorten(text: str, limit: int = TABLE_TEXT_CHARS) -> str:
    """A table cell's text cut to ``limit`` characters; the job's details below the table show it whole."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _player(job: Job, width: int = 512) -> str:
    src = f"/api/v1/jobs/{job.id}/result"
    # The poster: without it a browser shows black until the video is played (preload=metadata decodes no frame).
    return (f"<video id='result-{job.id}' class='lipdub-result' src='{src}' controls preload='metadata' "
            f"poster='/api/v1/jobs/{job.id}/thumbnail' "
            f"style='max-width:{width}px;width:100%;border-radius:8px;background:#000'></video>"
            f"<div><a href='{src}' download>Download MP4</a> &middot; "
            f"<a href='/api/v1/jobs/{job.id}/log' target='_blank'>Log</a></div>")


def _grid(jobs: list[Job]) -> str:
    cells = []
    for j in jobs:
        name = html.escape(f"{j.batch_index + 1}. {j.face_name} + {j.audio_name}")
        body = (f"<video src='/api/v1/jobs/{j.id}/result' poster='/api/v1/jobs/{j.id}/thumbnail' controls "
                "preload='metadata'></video>"
                if j.status == DONE else f"<div>{html.escape(_status_line(j))}</div>")
        cells.append(f"<figure>{body}<figcaption>{name}</figcaption></figure>")
    return f"<div class='lipdub-videos'>{''.join(cells)}</div>"


def _describe(path: str | None, role: str, studio: Studio, demo: gr.Blocks) -> str:
    """A one-line check of a picked file, shown before anything is submitted."""
    if not path:
        return ""
    try:
        _check_uploaded(path, studio, demo)
        info = check_media(path, role, limits=studio.settings.limits)
    except ValidationError as e:
        return f"**Refused:** {e}"
    size = Path(path).stat().st_size
    if size > studio.settings.max_upload_mb * 1024 * 1024:
        return f"**Refused:** {Path(path).name} is larger than the {studio.settings.max_upload_mb:g} MB limit."
    what = f"{info.kind}, {info.width}x{info.height}" if info.kind in ("video", "image") else info.kind
    dur = f", {info.duration:.1f} s" if info.duration else ""
    return f"**OK:** {Path(path).name}: {what}{dur}, {_fmt_bytes(size)}"


def _paths(files: Any) -> list[str]:
    if not files:
        return []
    items = files if isinstance(files, list) else [files]
    return [str(getattr(f, "name", f)) for f in items]


def _check_uploaded(path: str, studio: Studio, demo: gr.Blocks) -> None:
    """The studio's own check in front of every handler that takes a file: a file is only ever one that
    was uploaded through this UI and is still waiting in its folder, never a path a request names."""
    candidate = Path(path)
    folder = studio.storage.ui_dir.resolve()
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        real = None
    uploaded = {str(Path(p)) for p in getattr(demo, "upload_file_set", set())}
    if (real is None or candidate.is_symlink() or not real.is_file() or not real.is_relative_to(folder)
            or str(candidate) not in uploaded):
        log.warning("UI request named a file that was not uploaded through it: %r", path[:300])
        raise ValidationError(f"{safe_name(candidate.name, 'The file')} was not uploaded through this page, "
                              "or has expired; pick the file again.")


def _too_many(limiter: RateLimiter | None, request: gr.Request | None) -> str | None:
    """The API's per-client submission limit, for a press of a Generate button."""
    if limiter is None:
        return None
    client = getattr(getattr(request, "client", None), "host", None) or "?"
    wait = limiter.allow(client)
    return f"**Refused:** Too many submissions; try again in {wait:.0f} s." if wait else None


async def _in_thread(demo: gr.Blocks, fn: Callable[..., T], *args: Any) -> T:
    # The UI's own threads (demo.limiter), never those that answer the API.
    return await anyio.to_thread.run_sync(fn, *args, limiter=getattr(demo, "limiter", None))


def build_ui(studio: Studio, limiter: RateLimiter | None = None) -> gr.Blocks:
    # delete_cache: Gradio keeps a browser upload in the storage's ui_dir until a job copies it into the
    # storage; it forgets it after the same hour as the studio forgets unused uploads.
    with gr.Blocks(title="lipdub studio", analytics_enabled=False,
                   delete_cache=(600, int(UI_UPLOAD_TTL_S))) as demo:
        gr.HTML("<h1 id='studio-heading' class='lipdub-heading'>lipdub studio</h1>"
                "<p class='lipdub-tagline'>Make the person in a video or photo speak a recording.</p>")
        gr.HTML(_banner(studio))
        with gr.Tabs():
            _single_tab(studio, demo, limiter)
            _batch_tab(studio, demo, limiter)
            _history_tab(studio, demo)
    return demo


# -- Single ------------------------------------------------------------------------------------------


def _render_options() -> tuple[gr.Radio, gr.Dropdown, gr.Checkbox]:
    """The quality, engine and head-motion choices, one row, as the single and batch tabs both offer them."""
    with gr.Row():
        quality = gr.Radio(quality_names(), value="balanced", label="Quality")
        engine = gr.Dropdown(engine_names(), value="auto", label="Engine", info=missing_engine_note())
        moving = gr.Checkbox(True, label="Photos: move the head slightly")
    return quality, engine, moving


def _single_tab(studio: Studio, demo: gr.Blocks, limiter: RateLimiter | None) -> None:
    with gr.Tab("Single", id="single"):
        gr.Markdown("Upload a speech recording and a video or photo of a person, then press **Generate**.")
        with gr.Row():
            with gr.Column():
                audio = gr.File(label="Speech (audio, or a video with sound)", file_types=AUDIO_TYPES,
                                elem_id="single-audio")
                audio_msg = gr.Markdown(elem_id="single-audio-msg")
                face = gr.File(label="Face (video or photo)", file_types=FACE_TYPES, elem_id="single-face")
                face_msg = gr.Markdown(elem_id="single-face-msg")
                quality, engine, moving = _render_options()
                go = gr.Button("Generate", variant="primary", elem_id="single-generate")
            with gr.Column():
                status = gr.Markdown("No job yet.", elem_id="single-status")
                player = gr.HTML(elem_id="single-player")
                with gr.Accordion("Log", open=False):
                    log_box = gr.Textbox(lines=12, max_lines=30, show_label=False, elem_id="single-log")

        audio.change(lambda p: _describe(_first(p), AUDIO, studio, demo), audio, audio_msg)
        face.change(lambda p: _describe(_first(p), FACE, studio, demo), face, face_msg)

        def submit(a_path: str, f_path: str, q: str, e: str, hm: bool) -> Job:
            _check_uploaded(a_path, studio, demo)
            _check_uploaded(f_path, studio, demo)
            studio.check_options(e, q, hm)
            up_a = studio.add_upload_path(a_path, AUDIO)
            up_f = studio.add_upload_path(f_path, FACE)
            return studio.submit(up_a, up_f, quality=q, engine=e, head_motion=hm)

        async def run(a: Any, f: Any, q: str, e: str, hm: bool,
                      request: gr.Request) -> AsyncIterator[tuple[str, str, str]]:
            if refused := _too_many(limiter, request):
                yield refused, "", ""
                return
            a_path, f_path = _first(a), _first(f)
            if not a_path or not f_path:
                yield "**Refused:** Pick a speech file and a face video or photo first.", "", ""
                return
            try:
                job = await _in_thread(demo, submit, a_path, f_path, q, e, hm)
            except InputError as e:  # refused, or the server's disk is full
                yield f"**Refused:** {e}", "", ""
                return
            async for out in _follow(studio, demo, job.id):
                yield out

        go.click(run, [audio, face, quality, engine, moving], [status, player, log_box], concurrency_limit=None)


def _first(files: Any) -> str | None:
    paths = _paths(files)
    return paths[0] if paths else None


def _read_log(studio: Studio, job_id: str, tail: int = 20000) -> str:
    p = studio.storage.log_path(job_id)
    return p.read_text(errors="replace")[-tail:] if p.exists() else ""


def _job_outputs(studio: Studio, job_id: str) -> tuple[str, str, str, bool]:
    """(status line, player, log, finished) of a job, read in one go."""
    job = studio.store.get(job_id)
    if job is None:
        return f"Job {job_id} was deleted.", "", "", True
    if job.status == "queued":
        line = f"Job `{job.id}`: queued ({studio.store.queue_position(job)} ahead)"
    else:
        line = f"Job `{job.id}`: {_status_line(job)}"
    if job.status in FINISHED:
        secs = (job.result or {}).get("seconds")
        if job.status == DONE:
            line = f"Job `{job.id}` done" + (f" in {secs:.1f} s" if secs else "")
        return line, _player(job) if job.status == DONE else "", _read_log(studio, job_id), True
    return line, "", _read_log(studio, job_id), False


async def _follow(studio: Studio, demo: gr.Blocks, job_id: str) -> AsyncIterator[tuple[str, str, str]]:
    """Stream a job's status until it finishes (the job goes on if the page is closed). Waiting holds no
    thread: a page following a long render costs the server a timer, not a worker."""
    last = None
    while True:
        line, player, log_text, finished = await _in_thread(demo, _job_outputs, studio, job_id)
        if finished:
            yield line, player, log_text
            return
        if line != last:
            last = line
            yield line, "", log_text
        await asyncio.sleep(POLL_S)


# -- Batch -------------------------------------------------------------------------------------------


def _batch_tab(studio: Studio, demo: gr.Blocks, limiter: RateLimiter | None) -> None:
    with gr.Tab("Batch", id="batch"):
        gr.Markdown("One speech with many faces, or many speeches with one face. Each pair becomes a job.")
        with gr.Row():
            with gr.Column():
                audios = gr.File(label="Speech file(s)", file_count="multiple", file_types=AUDIO_TYPES,
                                 elem_id="batch-audios")
                faces = gr.File(label="Face video(s) or photo(s)", file_count="multiple", file_types=FACE_TYPES,
                                elem_id="batch-faces")
                check = gr.Markdown(elem_id="batch-check")
                quality, engine, moving = _render_options()
                go = gr.Button("Generate batch", variant="primary", elem_id="batch-generate")
            with gr.Column():
                status = gr.Markdown("No batch yet.", elem_id="batch-status")
                table = gr.Dataframe(headers=["#", "face", "audio", "status"], interactive=False,
                                     elem_id="batch-table")
                grid = gr.HTML(elem_id="batch-results")

        def describe(a: Any, f: Any) -> str:
            lines = ([_describe(p, AUDIO, studio, demo) for p in _paths(a)]
                     + [_describe(p, FACE, studio, demo) for p in _paths(f)])
            na, nf = len(_paths(a)), len(_paths(f))
            if na > 1 and nf > 1:
                lines.append("**Refused:** Use one speech with many faces, or many speeches with one face.")
            elif na and nf:
                lines.append(f"{na * nf} job(s) will be queued.")
            return "\n\n".join(x for x in lines if x)

        audios.change(describe, [audios, faces], check)
        faces.change(describe, [audios, faces], check)

        def submit(pa: list[str], pf: list[str], q: str, e: str, hm: bool) -> str:
            if not pa or not pf:
                raise ValidationError("Pick at least one speech file and one face.")
            if len(pa) > 1 and len(pf) > 1:
                raise ValidationError("Use one speech with many faces, or many speeches with one face.")
            studio.check_batch_shape(len(pa), len(pf))  # before storing: a refused batch stores nothing
            studio.check_options(e, q, hm)
            for p in pa + pf:
                _check_uploaded(p, studio, demo)
            ups_a = [studio.add_upload_path(p, AUDIO) for p in pa]
            ups_f = [studio.add_upload_path(p, FACE) for p in pf]
            batch_id, _jobs = studio.submit_batch(ups_a, ups_f, quality=q, engine=e, head_motion=hm)
            return batch_id

        def progress(batch_id: str) -> tuple[str, Any, str, bool]:
            jobs = studio.store.batch_jobs(batch_id)
            return (_batch_status(batch_id, jobs), _batch_rows(jobs), _grid(jobs),
                    all(j.status in FINISHED for j in jobs))

        async def run(a: Any, f: Any, q: str, e: str, hm: bool,
                      request: gr.Request) -> AsyncIterator[tuple[str, Any, str]]:
            if refused := _too_many(limiter, request):
                yield refused, None, ""
                return
            try:
                batch_id = await _in_thread(demo, submit, _paths(a), _paths(f), q, e, hm)
            except InputError as e:  # refused, or the server's disk is full
                yield f"**Refused:** {e}", None, ""
                return
            while True:
                line, rows, grid_html, finished = await _in_thread(demo, progress, batch_id)
                yield line, rows, grid_html
                if finished:
                    return
                await asyncio.sleep(POLL_S)

        go.click(run, [audios, faces, quality, engine, moving], [status, table, grid], concurrency_limit=None)


def _batch_status(batch_id: str, jobs: list[Job]) -> str:
    n = len(jobs)
    done = sum(1 for j in jobs if j.status in FINISHED)
    running = [j for j in jobs if j.status == "running"]
    if done == n:
        ok = sum(1 for j in jobs if j.status == DONE)
        return (f"Batch `{batch_id}`: {ok}/{n} done. "
                f"[Download all as zip](/api/v1/batches/{batch_id}/zip)")
    cur = running[0] if running else None
    now = f"{done + 1}/{n} - {cur.stage} {cur.progress * 100:.0f}%" if cur else f"{done}/{n} - queued"
    return f"Batch `{batch_id}`: {now}"


def _batch_rows(jobs: list[Job]) -> list[list[Any]]:
    return [[j.batch_index + 1, j.face_name, j.audio_name, _status_line(j)] for j in jobs]


# -- History -----------------------------------------------------------------------------------------


def _history_tab(studio: Studio, demo: gr.Blocks) -> None:
    with gr.Tab("History", id="history") as tab:
        usage = gr.Markdown(elem_id="history-usage")
        with gr.Row():
            prev_btn = gr.Button("◀ Previous", size="sm")
            page = gr.Number(value=1, precision=0, label="Page", minimum=1, elem_id="history-page")
            next_btn = gr.Button("Next ▶", size="sm")
            refresh = gr.Button("Refresh", size="sm", elem_id="history-refresh")
        page_info = gr.Markdown(elem_id="history-page-info")
        gallery = gr.Gallery(label="Results (click one to play it)", columns=6, height="auto",
                             allow_preview=False, elem_id="history-gallery")
        table = gr.Dataframe(headers=["id", "created", "status", "face", "audio", "length", "batch"],
                             interactive=False, elem_id="history-table")
        with gr.Row():
            with gr.Column():
                job_pick = gr.Dropdown(label="Job", choices=[], elem_id="history-job")
                info = gr.Markdown(elem_id="history-info")
                player = gr.HTML(elem_id="history-player")
                with gr.Row():
                    cancel_btn = gr.Button("Cancel job", size="sm")
                    delete_btn = gr.Button("Delete job", variant="stop", size="sm", elem_id="history-delete")
                log_box = gr.Textbox(label="Log", lines=12, max_lines=30, elem_id="history-log")
            with gr.Column():
                selection = gr.CheckboxGroup(label="Select jobs on this page", choices=[],
                                             elem_id="history-select")
                with gr.Row():
                    zip_btn = gr.Button("Zip selected", size="sm")
                    del_sel_btn = gr.Button("Delete selected", variant="stop", size="sm")
                zip_link = gr.Markdown(elem_id="history-zip")
                batch_pick = gr.Dropdown(label="Batch", choices=[], elem_id="history-batch")
                batch_link = gr.Markdown(elem_id="history-batch-zip")

        page_state = gr.State([])  # the ids shown in the gallery, in order

        def load(p: float | None) -> tuple[Any, ...]:
            p = _page_number(p)
            jobs, total = studio.store.list(p, PAGE_SIZE)
            pages = max(1, -(-total // PAGE_SIZE))
            if p > pages:
                p = pages
                jobs, total = studio.store.list(p, PAGE_SIZE)
            done = [j for j in jobs if j.status == DONE and studio.storage.thumbnail_path(j.id).exists()]
            thumbs = [(str(studio.storage.thumbnail_path(j.id)), f"{j.id} · {j.face_name}") for j in done]
            rows = [[j.id, j.created_at.strftime("%Y-%m-%d %H:%M:%S"), _shorten(_status_line(j)), j.face_name,
                     j.audio_name,
                     f"{(j.result or {}).get('duration', 0):.1f} s" if j.status == DONE else "",
                     j.batch_id or ""] for j in jobs]
            ids = [j.id for j in jobs]
            batches = [(f"{b} ({mode}, {n} jobs, {t:%Y-%m-%d %H:%M})", b) for b, mode, t, n in studio.store.list_batches()]
            return (p, f"Page {p} of {pages} · {total} job(s)", thumbs, rows,
                    gr.update(choices=ids, value=ids[0] if ids else None), gr.update(choices=ids, value=[]),
                    gr.update(choices=batches, value=batches[0][1] if batches else None), [j.id for j in done],
                    _usage(studio))

        outs = [page, page_info, gallery, table, job_pick, selection, batch_pick, page_state, usage]
        refresh.click(load, page, outs)
        page.submit(load, page, outs)
        prev_btn.click(lambda p: load((p or 1) - 1), page, outs)
        next_btn.click(lambda p: load((p or 1) + 1), page, outs)
        tab.select(load, page, outs)
        demo.load(load, page, outs)

        def show(job_id: str | None) -> tuple[str, str, str]:
            job = studio.store.get(job_id) if job_id else None
            if job is None:
                return "", "", ""
            lines = [f"**{job.id}** · {_status_line(job)}", f"{job.face_name} + {job.audio_name}",
                     f"created {job.created_at:%Y-%m-%d %H:%M:%S} UTC"]
            if job.result:
                r = job.result
                lines.append(f"{r.get('frames')} frames, {r.get('duration', 0):.1f} s, rendered in "
                             f"{r.get('seconds', 0):.1f} s on {r.get('device')} ({r.get('engine')})")
            return "  \n".join(lines), _player(job) if job.status == DONE else "", _read_log(studio, job.id)

        job_pick.change(show, job_pick, [info, player, log_box])

        def pick_from_gallery(ids: list[str], evt: gr.SelectData) -> Any:
            return ids[evt.index] if evt.index is not None and evt.index < len(ids) else gr.update()

        gallery.select(pick_from_gallery, page_state, job_pick)

        def cancel(job_id: str | None) -> tuple[str, str, str]:
            job = studio.store.get(job_id) if job_id else None
            if job is None:
                return "Pick a job to cancel first.", "", ""
            if job.status in FINISHED:
                info_text, player_html, log_text = show(job_id)
                return (f"**Nothing to cancel:** job {job.id} has already finished ({job.status}).  \n{info_text}",
                        player_html, log_text)
            studio.cancel(job_id)
            return show(job_id)

        cancel_btn.click(cancel, job_pick, [info, player, log_box])

        def delete(job_id: str | None, p: float) -> tuple[Any, ...]:
            if job_id:
                studio.delete(job_id)
            return load(p)

        delete_btn.click(delete, [job_pick, page], outs)

        def zip_selected(ids: list[str]) -> str:
            if not ids:
                return "Select some jobs first."
            q = "&".join(f"ids={i}" for i in ids)
            return f"[Download {len(ids)} result(s) as zip](/api/v1/zip?{q})"

        zip_btn.click(zip_selected, selection, zip_link)

        def delete_selected(ids: list[str], p: float) -> tuple[Any, ...]:
            for i in ids or []:
                studio.delete(i)
            return load(p)

        del_sel_btn.click(delete_selected, [selection, page], outs)
        batch_pick.change(lambda b: f"[Download batch {b} as zip](/api/v1/batches/{b}/zip)" if b else "",
                          batch_pick, batch_link)


def _page_number(value: Any) -> int:
    """A page number from the page box: whole, at least 1, at most MAX_PAGE (a larger one overflows the
    database's row offset); anything else is page 1."""
    try:
        return max(1, min(MAX_PAGE, int(value or 1)))
    except (TypeError, ValueError, OverflowError):
        return 1


def _usage(studio: Studio) -> str:
    u = studio.usage()
    keep = (f"finished jobs are deleted after {u['retention_days']:g} days" if u["retention_days"] > 0
            else "results are kept until you delete them")
    c = u["jobs"]
    budget = u["avatar_cache_budget_bytes"]
    cache = _fmt_bytes(u["avatar_cache_bytes"]) + (f" of {_fmt_bytes(budget)}" if budget > 0 else "")
    return (f"**Disk:** {_fmt_bytes(u['total_bytes'])} used (uploads {_fmt_bytes(u['uploads_bytes'])}, results "
            f"{_fmt_bytes(u['jobs_bytes'])}), avatar cache {cache}, {_fmt_bytes(u['free_bytes'])} free · {keep} · "
            f"{c['queued']} queued, {c['running']} running, {c['done']} done, {c['failed']} failed")
