"""Media I/O on real files: probing by content, constant-rate decoding, ping-pong, rotation."""

from __future__ import annotations

import shutil
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from conftest import AUDIOS, PHOTOS, VIDEOS, cut_audio, media, needs_media

from lipdub.errors import InputError
from lipdub.media.audio import load_audio
from lipdub.media.decode import TemplateFrames, VideoDecoder, pingpong_indices, prefetched
from lipdub.media.frames import blend_bgr, crop_bgr, crop_rgb, pack, planes, rotate
from lipdub.media.probe import probe

pytestmark = needs_media


@pytest.mark.parametrize("name", VIDEOS)
def test_probe_videos(name: str) -> None:
    info = probe(media(name))
    assert info.kind == "video" and info.has_video and info.has_audio
    assert info.width >= 512 and info.height >= 512
    assert 20 <= float(info.fps) <= 31
    assert info.duration > 4


@pytest.mark.parametrize("name", PHOTOS)
def test_probe_photos(name: str) -> None:
    info = probe(media(name))
    assert info.kind == "image" and not info.has_audio and info.width >= 256


@pytest.mark.parametrize("name", AUDIOS)
def test_probe_and_load_audio(name: str) -> None:
    info = probe(media(name))
    assert info.kind == "audio"
    clip = load_audio(media(name), info=info)
    assert clip.sample_rate == 16000 and clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert abs(clip.duration - info.duration) < 0.05
    assert 0.01 < np.abs(clip.samples).max() <= 1.0


def test_content_not_extension(tmp_path) -> None:
    wav_as_mp4 = tmp_path / "speech.mp4"
    shutil.copy(media("en_radio_8s.wav"), wav_as_mp4)
    assert probe(wav_as_mp4).kind == "audio"
    png_as_jpg = tmp_path / "face.jpg"
    shutil.copy(media("portrait_474.png"), png_as_jpg)
    assert probe(png_as_jpg).kind == "image"


@pytest.mark.parametrize("ext", [".mp3", ".m4a", ".flac", ".ogg", ".opus"])
def test_compressed_audio_formats(tmp_path, ext: str) -> None:
    path = cut_audio(media("en_speech_12s.wav"), tmp_path / f"speech{ext}", 3.0)
    clip = load_audio(path)
    assert abs(clip.duration - 3.0) < 0.15


def test_audio_track_of_a_video() -> None:
    clip = load_audio(media("katie_talk_512.mp4"))
    assert abs(clip.duration - probe(media("katie_talk_512.mp4")).duration) < 0.1


def test_missing_and_garbage_files(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        probe(tmp_path / "nope.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        probe(empty)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="not a readable"):
        probe(junk)


def test_variable_frame_rate_becomes_constant() -> None:
    info = probe(media("suit_talk_700_vfr.mp4"))
    frames = list(VideoDecoder(info, info.fps).frames())
    ks = [k for k, _ in frames]
    assert ks == list(range(len(ks)))  # consecutive constant-rate slots
    assert abs(len(ks) / float(info.fps) - info.duration) < 2 / float(info.fps)


def test_prefetched_frames_are_the_decoded_frames_in_order() -> None:
    info = probe(media("map_talk_844.mp4"))
    direct = list(VideoDecoder(info, info.fps).frames(0, 30))
    ahead = list(prefetched(VideoDecoder(info, info.fps).frames(0, 30), depth=3))
    assert [k for k, _ in ahead] == [k for k, _ in direct] == list(range(30))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(ahead, direct, strict=True))


def test_prefetch_hands_on_errors_and_stops_when_the_consumer_does() -> None:
    def broken():
        yield 1
        raise InputError("damaged")

    with pytest.raises(InputError, match="damaged"):
        list(prefetched(broken()))
    made: list[int] = []
    closed: list[bool] = []

    def endless():
        try:
            for i in range(10**9):
                made.append(i)
                yield i
        finally:
            closed.append(True)

    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # the consumer stops early: the producer thread ends and closes its source
    assert closed == [True] and len(made) <= 3 + 2 + 2


def test_pingpong_indices() -> None:
    assert pingpong_indices(9, 4).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert pingpong_indices(3, 1).tolist() == [0, 0, 0]


def test_backward_runs_match_forward_frames(monkeypatch) -> None:
    import lipdub.media.decode as decode

    info = probe(media("map_talk_844.mp4"))
    fps = Fraction(info.fps)
    forward = [f for _, f in VideoDecoder(info, fps).frames()]
    n = len(forward)
    monkeypatch.setattr(decode, "TEMPLATE_MEMORY_BUDGET", 0)  # force the re-decoding path
    order = pingpong_indices(2 * n + 5, n)
    for memory in (0, decode.BACKWARD_MEMORY):  # several short backward steps per run, then the default
        monkeypatch.setattr(decode, "BACKWARD_MEMORY", memory)
        source = TemplateFrames(info, fps, n)
        assert memory or source.backward_chunk < n // 2
        for i, frame in zip(order, source.frames_for(order), strict=True):
            assert np.array_equal(frame, forward[i])


def test_rotation_of_planes() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 255, (4, 6), dtype=np.uint8)
    u = rng.integers(0, 255, (2, 3), dtype=np.uint8)
    v = rng.integers(0, 255, (2, 3), dtype=np.uint8)
    turned = rotate(pack(y, u, v), 90)
    ty, tu, _ = planes(turned)
    assert ty.shape == (6, 4) and np.array_equal(ty, np.rot90(y, -1)) and np.array_equal(tu, np.rot90(u, -1))
    assert np.array_equal(rotate(rotate(pack(y, u, v), 180), 180), pack(y, u, v))


def _rotate_mp4(src, dst) -> None:
    """Copy an MP4 and set its video track's display matrix to a 90-degree turn (as phones write it)."""
    import struct

    data = bytearray(src.read_bytes())
    pos = 0
    while True:
        pos = data.find(b"tkhd", pos + 1)
        assert pos > 0, "no video track header"
        version = data[pos + 4]
        off = pos + 4 + 4 + (32 if version == 1 else 20) + 8 + 8  # version/flags, times, ids, reserved, layer...
        width = struct.unpack(">I", data[off + 36 : off + 40])[0]
        if width:  # the audio track's header has width 0
            break
    # Rotation by 90 degrees: [0 1 0; -1 0 0; 0 0 1] in 16.16 and 2.30 fixed point.
    matrix = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    data[off : off + 36] = matrix
    dst.write_bytes(bytes(data))


def test_rotation_metadata_is_honoured(tmp_path) -> None:
    src = media("katie_talk_512.mp4")
    rotated = tmp_path / "phone.mp4"
    _rotate_mp4(src, rotated)
    info = probe(rotated)
    assert info.rotation in (90, 270)
    plain = next(VideoDecoder(probe(src), Fraction(25)).frames())[1]
    turned = next(VideoDecoder(info, Fraction(25)).frames())[1]
    assert np.array_equal(turned, rotate(plain, info.rotation))


def test_blend_changes_only_pixels_with_alpha_and_reads_a_part_of_the_crop() -> None:
    from lipdub.render.base import FrameTask

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (120 * 3 // 2, 160), np.uint8)  # a 160x120 I420 frame
    box = (20, 10, 120, 90)
    task = FrameTask(0, 0, None, box, None, frame=frame)
    assert task.shape == (80, 100)
    whole = crop_bgr(frame, box)
    np.testing.assert_array_equal(task.region((10, 20, 40, 60)), whole[20:60, 10:40])  # before the crop exists
    np.testing.assert_array_equal(task.crop, whole)

    # A part of the crop (at an even origin), alpha 0 on its border: only alpha > 0 may change.
    out = frame.copy()
    bgr = np.full((40, 30, 3), 200, np.uint8)
    alpha = np.zeros((40, 30), np.float32)
    alpha[10:30, 8:22] = np.linspace(0.1, 1.0, 14, dtype=np.float32)
    ox, oy = box[0] + 10, box[1] + 20
    blend_bgr(out, (ox, oy, ox + 30, oy + 40), bgr, alpha)
    y_before, y_after = planes(frame)[0], planes(out)[0]
    touched = np.zeros(y_before.shape, bool)
    touched[oy + 10 : oy + 30, ox + 8 : ox + 22] = True
    np.testing.assert_array_equal(y_after[~touched], y_before[~touched])
    new_y = int(planes(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420))[0][0, 0])
    assert np.all(np.abs(y_after[oy + 10 : oy + 30, ox + 21].astype(int) - new_y) <= 1)  # alpha 1: the new colour
    chroma_touched = np.zeros(planes(frame)[1].shape, bool)
    chroma_touched[(oy + 10) // 2 : (oy + 30) // 2, (ox + 8) // 2 : (ox + 22) // 2] = True
    for k in (1, 2):
        np.testing.assert_array_equal(planes(out)[k][~chroma_touched], planes(frame)[k][~chroma_touched])


@needs_media
def test_shrunken_window_matches_the_full_resolution_picture() -> None:
    """The face-mesh window (crop_rgb) is the frame's own picture, shrunk: same colours, exact scale."""
    info = probe(media("katie_talk_512.mp4"))
    _, frame = next(iter(VideoDecoder(info, info.fps).frames(0, 1)))
    box = (10, 6, 500, 496)  # even-aligned, 490 px wide
    small, (sx, sy) = crop_rgb(frame, box, max_side=200)
    assert max(small.shape[:2]) <= 200 and small.shape[1] % 2 == 0 and small.shape[0] % 2 == 0
    assert sx == pytest.approx(small.shape[1] / 490) and sy == pytest.approx(small.shape[0] / 490)
    full = crop_bgr(frame, box)[..., ::-1]
    ref = cv2.resize(full, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    # The two shrink with different filters, so edges differ a little; compared softened, a window
    # off by one pixel differs by about 5 levels and swapped channels by about 23.
    soft = [cv2.GaussianBlur(a, (0, 0), 1.0).astype(int) for a in (small, ref)]
    assert np.abs(soft[0] - soft[1]).mean() < 2.5
    same, scale = crop_rgb(frame, box)  # no limit: the crop at full resolution
    assert scale == (1.0, 1.0) and np.array_equal(same, full)


def test_encoder_blends_overlays_into_its_own_frame(tmp_path) -> None:
    """An OutputFrame encodes as its packed() image does, and its template frame is left unchanged.

    334 pixels wide: the encoder's rows are padded past the width, which the blend must skip."""
    from lipdub.media.encode import VideoWriter
    from lipdub.media.frames import OutputFrame, Overlay

    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (180 * 3 // 2, 334), np.uint8)
    frame.setflags(write=False)
    bgr = rng.integers(0, 256, (60, 80, 3), np.uint8)
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    alpha = np.zeros((60, 80), np.float32)
    alpha[10:50, 10:70] = 0.7
    out = OutputFrame(frame, [Overlay((240, 100, 320, 160), bgr, alpha),
                              Overlay((20, 20, 100, 80), yuv, alpha, i420=True)])
    audio = probe(media("en_radio_8s.wav"))
    decoded = []
    for name, item in (("overlays", out), ("packed", out.packed())):
        writer = VideoWriter(tmp_path / f"{name}.mp4", 334, 180, Fraction(25), audio, "balanced")
        writer.write(item)
        writer.close()
        with av.open(str(tmp_path / f"{name}.mp4")) as c:
            decoded.append(next(c.decode(video=0)).to_ndarray(format="yuv420p"))
    np.testing.assert_array_equal(decoded[0], decoded[1])
    assert not np.array_equal(out.packed(), frame)  # the overlays do change the picture...
    assert out.frame is frame  # ...not the template frame


def _full_range_clip(src, dst, frames: int = 10) -> None:
    """Re-encode ``src`` as a full-range (JPEG-range) H.264 clip, the way some phones record."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 512, 512, "yuvj420p"
        st.codec_context.color_range = 2
        st.options = {"crf": "8"}
        for k, frame in enumerate(inp.decode(video=0)):
            if k >= frames:
                break
            rgb = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            for p in st.encode(rgb.reformat(format="yuvj420p", dst_color_range="JPEG")):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)


def test_full_range_pictures_and_videos_keep_their_colours(tmp_path) -> None:
    """A JPEG photo and a full-range video decode into video-range I420 that shows the same colours
    (left as they were, their blacks came out crushed and their highlights blown: 9 levels off on average)."""
    from lipdub.media.decode import is_full_range, load_image

    photo = media("portrait_624.jpg")
    with av.open(str(photo)) as c:
        assert is_full_range(next(c.decode(video=0)))
    for picture in (photo, media("portrait_474.png")):  # an RGB picture came out full range too (5.5 levels off)
        shown = cv2.cvtColor(load_image(probe(picture)), cv2.COLOR_YUV2BGR_I420)
        assert np.abs(shown.astype(int) - cv2.imread(str(picture)).astype(int)).mean() < 1.5

    clip = tmp_path / "full_range.mp4"
    _full_range_clip(media("katie_talk_512.mp4"), clip)
    with av.open(str(clip)) as c:
        truth = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]  # FFmpeg honours the range
        c.seek(0)
        assert is_full_range(next(c.decode(video=0)))
    for k, frame in VideoDecoder(probe(clip), Fraction(25)).frames(0, 10):
        shown = cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_I420)
        assert np.abs(shown.astype(int) - truth[k].astype(int)).mean() < 1.5
        y = frame[:512]
        assert y.min() >= 16 and y.max() <= 235


def test_output_carries_the_colour_tags_of_its_frames(tmp_path) -> None:
    """A BT.709-tagged template's output is tagged BT.709, an untagged one's stays untagged, and a photo's
    is tagged with the BT.601 matrix its pixels were converted with (untagged, a player would take an
    HD picture for BT.709 and shift its colours)."""
    from lipdub.media.decode import yuv_colour
    from lipdub.media.encode import VideoWriter

    tagged = tmp_path / "bt709.mp4"
    with av.open(str(media("katie_talk_512.mp4"))) as inp, av.open(str(tagged), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 512, 512, "yuv420p"
        st.codec_context.colorspace = st.codec_context.color_primaries = st.codec_context.color_trc = 1
        for k, frame in enumerate(inp.decode(video=0)):
            if k >= 3:
                break
            frame.pts = None
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    assert yuv_colour(probe(tagged)) == (1, 1, 1)
    assert yuv_colour(probe(media("katie_talk_512.mp4"))) == (2, 2, 2)
    assert yuv_colour(probe(media("portrait_624.jpg")))[0] == 5  # JPEG's own BT.601 (BT470BG) matrix
    assert yuv_colour(probe(media("portrait_474.png")))[0] == 6  # RGB, converted with BT.601 (SMPTE170M)

    audio = probe(media("en_radio_8s.wav"))
    frame = np.full((96, 64), 128, np.uint8)
    for colour in ((1, 1, 1), (2, 2, 2), (6, 2, 2)):
        writer = VideoWriter(tmp_path / "out.mp4", 64, 64, Fraction(25), audio, "fast", colour=colour)
        writer.write(frame)
        writer.close()
        with av.open(str(tmp_path / "out.mp4")) as c:
            cc = c.streams.video[0].codec_context
            assert (cc.colorspace, cc.color_primaries, cc.color_trc) == colour


@pytest.mark.parametrize(("name", "rate"), [("en_radio_8s.wav", 16000), ("en_speech_12s.wav", 48000)])
def test_output_speech_starts_with_the_video(tmp_path, name: str, rate: int) -> None:
    """The output's speech lines up with the input's to the sample: the AAC encoder's priming delay
    (1024 samples) is hidden by an edit list, as players expect. Played, it puts the speech 21 ms
    (48 kHz) to 64 ms (16 kHz) behind the lips."""
    from lipdub.media.encode import VideoWriter

    src = cut_audio(media(name), tmp_path / "speech.wav", 2.0)
    writer = VideoWriter(tmp_path / "out.mp4", 64, 64, Fraction(25), probe(src), "fast")
    frame = np.full((96, 64), 128, np.uint8)
    for _ in range(50):
        writer.write(frame)
    writer.close()
    expected = load_audio(src, sample_rate=rate).samples
    got = load_audio(tmp_path / "out.mp4", sample_rate=rate).samples
    n = min(len(expected), len(got))
    assert abs(len(got) - len(expected)) < 0.01 * rate  # and no second of priming or padding either
    # Lag of the best match within +-100 ms, by correlation on a window of speech.
    win = expected[rate // 2: rate // 2 + rate // 2]
    lags = range(-rate // 10, rate // 10 + 1)
    scores = [float(np.dot(win, got[rate // 2 + k: rate // 2 + k + len(win)])) for k in lags]
    assert list(lags)[int(np.argmax(scores))] == 0, "the output's speech is shifted against the input's"
    assert n > rate


@pytest.mark.parametrize("rate", [10_000, 37_800])
def test_speech_at_a_rate_aac_cannot_carry_is_resampled(tmp_path, rate: int) -> None:
    """Only some rates exist in AAC; a 10 kHz recording made the encoder fail after the whole analysis."""
    import wave

    from lipdub.media.encode import AAC_RATES, VideoWriter

    samples = load_audio(media("en_radio_8s.wav"), sample_rate=rate).samples[: 2 * rate]
    src = tmp_path / f"speech_{rate}.wav"
    with wave.open(str(src), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    writer = VideoWriter(tmp_path / "out.mp4", 64, 64, Fraction(25), probe(src), "fast")
    for _ in range(50):
        writer.write(np.full((96, 64), 128, np.uint8))
    writer.close()
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.audio[0].codec_context.sample_rate in AAC_RATES
    assert abs(load_audio(tmp_path / "out.mp4").duration - 2.0) < 0.05


def test_a_streamed_webm_without_a_stated_length_is_measured(tmp_path) -> None:
    """A browser's MediaRecorder writes WebM as a stream, with no duration in its header; such speech was
    refused as "empty (0.00 s)"."""
    import io

    class Unseekable(io.RawIOBase):  # a live stream: the muxer cannot go back to write the length
        def __init__(self, f) -> None:  # noqa: ANN001
            self.f = f

        def writable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def write(self, b) -> int:  # noqa: ANN001
            return self.f.write(b)

    speech = load_audio(media("en_radio_8s.wav"), sample_rate=48000).samples[: 2 * 48000]
    out = tmp_path / "recorded.webm"
    with open(out, "wb") as f, av.open(Unseekable(f), "w", format="webm") as o:
        st = o.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(speech.astype(np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate = 48000
        for packet in [*st.encode(frame), *st.encode(None)]:
            o.mux(packet)
    with av.open(str(out)) as c:
        assert c.duration is None  # the case at hand
    info = probe(out)
    assert info.kind == "audio" and abs(info.duration - 2.0) < 0.05


def _rgb(info) -> np.ndarray:
    from lipdub.media.decode import load_image

    return cv2.cvtColor(load_image(info), cv2.COLOR_YUV2RGB_I420).astype(np.float32)


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_a_photo_comes_out_upright_whatever_its_exif_orientation(tmp_path, orientation: int) -> None:
    """A phone photo stored turned and mirrored, with the EXIF tag that says how to show it (2, 4, 5, 7:
    mirrored) came out upside down or mirrored: only the display matrix's angle was read."""
    from PIL import Image

    upright = Image.open(media("portrait_624.jpg")).convert("RGB").crop((0, 0, 624, 500))  # not square
    undo = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"phone_{orientation}.jpg"
    upright.transpose(undo).save(path, exif=exif, quality=95)
    info = probe(path)
    assert (info.width, info.height) == (624, 500)
    shown = _rgb(info)
    assert shown.shape == (500, 624, 3)
    assert np.abs(shown - np.asarray(upright, np.float32)).mean() < 3  # JPEG and YUV rounding only


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_an_animated_face_is_its_first_frame(tmp_path, fmt: str, caplog) -> None:
    """An animated GIF or WebP offered as the face is a photo: its first frame (an animated WebP was
    refused as "a video stream without a picture size; ... damaged")."""
    from PIL import Image

    photo = Image.open(media("portrait_474.png")).convert("RGB")
    frames = [photo.rotate(angle) for angle in (0, 8, 16)]
    path = tmp_path / f"wave.{fmt}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=120, loop=0,
                   **({"lossless": True} if fmt == "webp" else {}))
    with caplog.at_level("INFO"):
        info = probe(path)
    assert info.kind == "image" and (info.width, info.height) == photo.size
    assert "first frame" in caplog.text
    first = np.asarray(Image.open(path).convert("RGB"), np.float32)  # what the file's first frame holds
    assert np.abs(_rgb(info) - first).mean() < 3
    assert np.abs(_rgb(info) - np.asarray(frames[1], np.float32)).mean() > 10  # not another frame


def test_a_transparent_photo_is_shown_over_grey(tmp_path, caplog) -> None:
    """A cut-out PNG: its transparent parts became black (the colour they hold); now neutral grey, said in the log."""
    from PIL import Image

    rgba = np.asarray(Image.open(media("portrait_474.png")).convert("RGBA")).copy()
    h, w = rgba.shape[:2]
    rgba[:, : w // 4] = 0  # transparent black, as image editors store a cut-out's background
    rgba[:, w // 4 : w // 4 + 8, 3] = 128  # a half-transparent seam
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba).save(path)
    info = probe(path)
    with caplog.at_level("INFO"):
        shown = _rgb(info)
    assert "transparent" in caplog.text and "grey" in caplog.text
    assert np.abs(shown[8:-8, 8 : w // 4 - 8] - 128).max() < 4
    seam = rgba[:, w // 4 + 2, :3].astype(np.float32) * (128 / 255) + 128 * (1 - 128 / 255)
    assert np.abs(shown[8:-8, w // 4 + 2] - seam[8:-8]).mean() < 4
    assert np.abs(shown[:, w // 2 :] - rgba[:, w // 2 :, :3]).mean() < 3  # the opaque rest is untouched


def test_a_text_file_named_like_a_photo_is_not_an_image_or_video(tmp_path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("Meeting notes\n" * 40)
    with pytest.raises(InputError, match=r"notes\.jpg is not an image or video"):
        probe(path)


def test_the_studio_file_pickers_take_every_format_the_readme_lists() -> None:
    """The README lists wma and aiff speech (and nine video kinds); the studio's pickers hid some of them."""
    import re
    from pathlib import Path

    from gradio_client.utils import is_valid_file

    from lipdub.studio.web.ui import AUDIO_TYPES, FACE_TYPES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    inputs = readme[readme.index("- **Inputs.**"):].split("\n- ")[0]
    audio_line, template_line = inputs.split("Templates:")
    audio = re.findall(r"\b([a-z0-9]{2,4})\b(?=,| or)", audio_line.split(":", 1)[1])
    videos, photos = template_line.split(" videos, or ")
    videos, photos = re.findall(r"[a-z0-9]{2,4}", videos), re.findall(r"[a-z0-9]{2,4}", photos.split(" photos")[0])
    assert {"wma", "aiff"} <= set(audio) and {"mkv", "3gp"} <= set(videos) and "bmp" in photos
    for ext in audio + videos:  # a video's sound track is speech too
        assert is_valid_file(f"speech.{ext}", AUDIO_TYPES), ext  # what Gradio checks an upload with
    for ext in videos + photos + ["gif", "jpeg"]:
        assert is_valid_file(f"face.{ext}", FACE_TYPES), ext
