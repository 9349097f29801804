"""The avatar cache stays within its budget: least recently used avatars go, avatars in use stay."""

from __future__ import annotations

import os
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import cut_audio, cut_video, media, run_cli

from lipdub.errors import InputError
from lipdub.face.analyse import analyse_template
from lipdub.face.cache import USED_MARK, avatars_root, budget_bytes, cached_avatars, mark_used, prune
from lipdub.media.probe import probe
from lipdub.pipeline import generate
from lipdub.render import bank as bank_mod


def _avatar_folder(root: Path, name: str, size: int, used_ago: float | None) -> Path:
    folder = root / name
    (folder / "bank").mkdir(parents=True)
    (folder / "bank" / "images.u8").write_bytes(b"\0" * size)
    if used_ago is not None:
        (folder / USED_MARK).touch()
        t = time.time() - used_ago
        os.utime(folder / USED_MARK, (t, t))
    return folder


def _set_last_use(folder: Path, ago: float) -> None:
    t = time.time() - ago
    (folder / USED_MARK).touch()
    os.utime(folder / USED_MARK, (t, t))


def test_prune_removes_the_least_recently_used_first_and_spares_avatars_in_use(tmp_path: Path) -> None:
    oldest = _avatar_folder(tmp_path, "a", 100, used_ago=3 * 86400)
    unmarked = _avatar_folder(tmp_path, "b", 100, used_ago=None)  # from before marks: its files' age
    for path in (unmarked / "bank" / "images.u8", unmarked):
        os.utime(path, (time.time() - 86400, time.time() - 86400))
    older = _avatar_folder(tmp_path, "c", 100, used_ago=2 * 3600)
    busy = _avatar_folder(tmp_path, "d", 100, used_ago=60)  # a running job's
    kept = _avatar_folder(tmp_path, "e", 100, used_ago=5 * 86400)  # the caller's own
    writing = tmp_path / (bank_mod.TEMP_PREFIX + "x")  # a bank being written: not an avatar
    writing.mkdir()
    (writing / "images.u8").write_bytes(b"\0" * 1000)

    assert [a.folder for a in cached_avatars(tmp_path)] == [kept, oldest, unmarked, older, busy]
    assert prune(tmp_path, 0) == []  # no limit
    removed = prune(tmp_path, 250, keep=(kept,))
    assert [a.folder for a in removed] == [oldest, unmarked, older]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([busy.name, kept.name, writing.name])
    # Over budget with nothing left that may go: nothing more is removed.
    assert prune(tmp_path, 50, keep=(kept,)) == []
    assert busy.exists() and kept.exists()


def test_budget_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIPDUB_CACHE_MAX_GB", raising=False)
    assert budget_bytes() == 20 * 2**30
    monkeypatch.setenv("LIPDUB_CACHE_MAX_GB", "0.5")
    assert budget_bytes() == 2**29
    monkeypatch.setenv("LIPDUB_CACHE_MAX_GB", "0")
    assert budget_bytes() == 0
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv("LIPDUB_CACHE_MAX_GB", bad)
        with pytest.raises(InputError, match="LIPDUB_CACHE_MAX_GB"):
            budget_bytes()


def test_generate_keeps_the_cache_within_its_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two templates and a budget for one: the second job's bank evicts the first avatar, which was last
    used hours ago; a stale bank format goes too; the first template still works afterwards."""
    cache = tmp_path / "cache"
    root = avatars_root(cache)
    speech = cut_audio(media("en_speech_12s.wav"), tmp_path / "speech.wav", 1.0)
    first = cut_video(media("katie_talk_512.mp4"), tmp_path / "katie.mp4", 40)
    second = cut_video(media("blue_talk_700.mp4"), tmp_path / "blue.mp4", 40)

    generate(speech, first, tmp_path / "one.mp4", device="cpu", cache_dir=cache)
    (one,) = cached_avatars(root)
    assert (one.folder / f"mouth_bank_v{bank_mod.BANK_VERSION}").is_dir()
    assert one.source == "katie.mp4"  # which template it is, for `lipdub cache`
    _set_last_use(one.folder, 2 * 3600)

    monkeypatch.setenv("LIPDUB_CACHE_MAX_GB", str(one.bytes * 1.5 / 2**30))
    result = generate(speech, second, tmp_path / "two.mp4", device="cpu", cache_dir=cache)
    assert result.engine == "retrieval" and result.faces_missing == 0
    (two,) = cached_avatars(root)
    assert two.folder != one.folder and not one.folder.exists()

    # The first template again, analysed on its own first (so generate builds its bank separately), with a
    # bank of an older format in its folder, as after an upgrade: that one goes; the second avatar is in use.
    avatar = analyse_template(probe(first), Fraction(25), cache)
    stale = avatar.cache_dir / "mouth_bank_v1"
    stale.mkdir()
    (stale / "images.u8").write_bytes(b"\0" * 1000)
    generate(speech, first, tmp_path / "three.mp4", device="cpu", cache_dir=cache)
    assert not stale.exists()
    assert {a.folder for a in cached_avatars(root)} == {avatar.cache_dir, two.folder}
    assert (tmp_path / "three.mp4").stat().st_size > 0


def test_a_pruned_bank_stays_readable_by_the_job_that_opened_it(tmp_path: Path) -> None:
    path = cut_video(media("katie_talk_512.mp4"), tmp_path / "katie.mp4", 30)
    info = probe(path)
    avatar = analyse_template(info, Fraction(25), tmp_path / "cache")
    bank = bank_mod.mouth_bank(avatar, info)
    before = np.asarray(bank.images.i420(5)).copy()
    _set_last_use(avatar.cache_dir, 2 * 3600)
    assert prune(avatar.cache_dir.parent, 1) and not avatar.cache_dir.exists()
    np.testing.assert_array_equal(bank.images.i420(5), before)
    bank.images.close()
    with pytest.raises(ValueError, match="closed"):
        bank.images.i420(5)


def test_cache_command_lists_prunes_and_clears(tmp_path: Path) -> None:
    root = avatars_root(tmp_path)
    old = _avatar_folder(root, "0123456789abcdef01234567", 2000, used_ago=3 * 86400)
    new = _avatar_folder(root, "76543210fedcba9876543210", 1000, used_ago=30)
    listed = run_cli("cache", "--cache-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert old.name in listed.stdout and new.name in listed.stdout and "2 avatar(s)" in listed.stderr
    cleared = run_cli("cache", "--clear", "--cache-dir", str(tmp_path))
    assert cleared.returncode == 0, cleared.stderr
    assert not old.exists() and new.exists()  # used a moment ago: perhaps by a running job
    assert "1 avatar(s)" in cleared.stderr


def test_prune_spares_an_avatar_marked_after_it_was_listed_and_sweeps_cut_removals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job may start using an avatar between prune's listing and its removal: the mark is read again
    just before, and the avatar stays. A folder just made (empty, unmarked) does not look ancient, and
    a removal cut short by a killed process is finished."""
    from lipdub.face import cache as cache_mod

    old = _avatar_folder(tmp_path, "old", 100, used_ago=3 * 86400)
    listed = cached_avatars(tmp_path)
    mark_used(old)  # a job takes it now
    monkeypatch.setattr(cache_mod, "cached_avatars", lambda root: listed)
    assert prune(tmp_path, 1) == [] and old.exists()
    monkeypatch.undo()

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    cut = tmp_path / ".removing-gone-123"
    (cut / "bank").mkdir(parents=True)
    _set_last_use(old, 3 * 86400)
    assert [a.folder for a in prune(tmp_path, 1)] == [old]
    assert fresh.exists() and not cut.exists()


def test_mouth_banks_still_being_written_count_towards_the_budget(tmp_path: Path) -> None:
    """Two avatars well within a 360-byte budget, and a job writing a 250-byte bank: the cache holds 450
    bytes, so the avatar used longest ago goes (the banks being written were not counted)."""
    old = _avatar_folder(tmp_path, "a", 100, used_ago=3 * 86400)
    recent = _avatar_folder(tmp_path, "b", 100, used_ago=2 * 3600)
    writing = tmp_path / (bank_mod.TEMP_PREFIX + "job1")
    writing.mkdir()
    (writing / "images.u8").write_bytes(b"\0" * 250)
    assert [a.folder for a in prune(tmp_path, 360)] == [old]
    assert recent.exists() and writing.exists()  # within budget again; the bank in progress is never touched


def test_a_bank_built_by_this_job_is_not_reported_as_found_in_the_cache(tmp_path: Path) -> None:
    template = cut_video(media("map_talk_844.mp4"), tmp_path / "t.mp4", 30)
    speech = cut_audio(media("en_radio_8s.wav"), tmp_path / "s.wav", 1.0)
    cache = tmp_path / "cache"
    args = ("generate", "--face", str(template), "--audio", str(speech), "--engine", "retrieval",
            "--cache-dir", str(cache))
    first = run_cli(*args, "-o", str(tmp_path / "a.mp4"))
    assert first.returncode == 0, first.stderr
    assert "Mouth bank:" in first.stderr and "found in the avatar cache" not in first.stderr
    second = run_cli(*args, "-o", str(tmp_path / "b.mp4"))
    assert second.returncode == 0, second.stderr
    assert "Mouth bank found in the avatar cache" in second.stderr
