"""``--engine wav2lip``: the published Wav2Lip generator on the user's own checkpoint.

Per output frame: a 96x96 face crop from lipdub's own landmarks (box smoothed over time), its lower
half blanked and stacked with the unmasked crop as reference (6 channels, BGR in [0, 1], as in
training), plus the 16 mel columns of that frame. The 96x96 output is upscaled back to the face box
and handed to the pipeline with a soft mouth-and-jaw alpha, so the rest of the frame stays the
template's at full resolution.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np
from scipy.signal import resample_poly

from lipdub.device import Device, cpu_device, is_cuda_error, is_out_of_memory, release_cached_memory
from lipdub.errors import ModelError
from lipdub.face.avatar import Avatar
from lipdub.render.base import FrameTask, RenderContext, RenderedCrop, Renderer
from lipdub.render.masks import lower_face_mask
from lipdub.render.wav2lip.mel import SAMPLE_RATE, mel_windows, melspectrogram

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FACE_SIZE = 96  # the generator's input and output side
DEFAULT_BATCH = 32
MIN_GPU_BATCH = 4  # below this an out-of-memory GPU is given up for the CPU
BOX_SMOOTH_FRAMES = 5  # centred moving average of the face box, as the published inference does
CHIN_MARGIN = 0.10  # extra box height below the chin (fraction of face height): the jaw moves down

# Mediapipe face-mesh indices of the middle of each eyebrow.
_BROWS = [105, 334]
FOREHEAD_TRIM = 0.3  # share of the forehead (mesh top to brows) left out of the box


class Wav2LipRenderer(Renderer):
    """Neural mouth synthesis with a user-supplied Wav2Lip checkpoint (never bundled: its license is
    non-commercial)."""

    name: ClassVar[str] = "wav2lip"

    def __init__(self, device: Device, weights: str | os.PathLike | None = None, batch_size: int = DEFAULT_BATCH,
                 **options) -> None:
        super().__init__(device, **options)
        if not weights:
            raise ModelError("The wav2lip engine needs your own checkpoint: pass --weights PATH to "
                             "wav2lip.pth or wav2lip_gan.pth.")
        self.weights = os.fspath(weights)
        if not os.path.isfile(self.weights):  # fail before any rendering starts; contents are checked on load
            raise ModelError(f"Wav2Lip weights not found at {self.weights}; pass the path of your wav2lip.pth "
                             "or wav2lip_gan.pth with --weights.")
        self.batch_size = max(1, int(batch_size))
        self.model: torch.nn.Module | None = None

    @classmethod
    def suits(cls, avatar: Avatar) -> bool:
        # Never picked by ``--engine auto``: it only runs when the user names it and gives weights.
        return False

    def prepare(self, ctx: RenderContext) -> None:
        super().prepare(ctx)
        from lipdub.render.wav2lip.checkpoint import load_wav2lip

        try:
            self.model = load_wav2lip(self.weights, self.device.torch)
        except Exception as e:
            if not (self.device.kind == "cuda" and is_cuda_error(e)):
                raise
            # Out of memory (or a failing GPU) before the first frame: the whole job on the CPU.
            log.warning("The Wav2Lip model does not load on %s (%s); rendering on the CPU.", self.device.describe(),
                        _first_line(e))
            self.model = None
            release_cached_memory(self.device)
            self.device = cpu_device()
            self.model = load_wav2lip(self.weights, self.device.torch)
        if ctx.audio is None:
            raise ValueError("the wav2lip engine needs the speech in its render context")
        samples = np.asarray(ctx.audio.samples, np.float32)
        if ctx.audio.sample_rate != SAMPLE_RATE:  # the mel recipe is defined at 16 kHz
            g = np.gcd(int(ctx.audio.sample_rate), SAMPLE_RATE)
            samples = resample_poly(samples, SAMPLE_RATE // g, int(ctx.audio.sample_rate) // g).astype(np.float32)
        self.mels = mel_windows(melspectrogram(samples), ctx.n_frames, ctx.fps)
        self.boxes = plan_face_boxes(ctx.avatar.landmarks, ctx.template_indices)
        log.info("wav2lip: %d frames on %s (%s), batches of %d", ctx.n_frames, self.device.describe(),
                 "FP16" if self.device.half else "FP32", self.batch_size)

    def render(self, tasks: list[FrameTask]) -> list[RenderedCrop]:
        out: list[RenderedCrop | None] = [None] * len(tasks)
        todo: list[tuple[int, tuple[int, int, int, int], np.ndarray]] = []  # (task position, box in crop, 96x96)
        for i, task in enumerate(tasks):
            box = self._box_in_crop(task)
            if box is None:
                out[i] = RenderedCrop(task.crop, None)  # no face: leave the frame as it is
                continue
            x0, y0, x1, y1 = box
            face = cv2.resize(task.crop[y0:y1, x0:x1], (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
            todo.append((i, box, face))
        if todo:
            faces = np.stack([f for _, _, f in todo])
            mels = self.mels[[min(tasks[i].out_index, len(self.mels) - 1) for i, _, _ in todo]]
            preds = self._infer(faces, mels)
            for (i, box, _), pred in zip(todo, preds, strict=True):
                out[i] = self._composite(tasks[i], box, pred)
        return out  # type: ignore[return-value]  # every slot is filled above

    # -- inference ---------------------------------------------------------------------------------

    def _infer(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        """(N, 96, 96, 3) BGR uint8 faces + (N, 1, 80, 16) mels -> (N, 96, 96, 3) BGR uint8, in chunks.

        On CUDA, an out-of-memory error halves the batch for the rest of the job; below
        ``MIN_GPU_BATCH``, or after any other CUDA failure, the rest of the job runs on the CPU (one
        warning). Other errors are bugs and propagate."""
        results = []
        start = 0
        while start < len(faces):
            size = self.batch_size
            chunk = slice(start, start + size)
            try:
                results.append(self._forward(faces[chunk], mels[chunk]))
            except Exception as e:
                if not (self.device.kind == "cuda" and is_cuda_error(e)):
                    raise
                if is_out_of_memory(e):
                    self._release_gpu_memory()
                if is_out_of_memory(e) and size > MIN_GPU_BATCH:
                    self.batch_size = size // 2  # kept for every later chunk of this job
                    log.warning("GPU out of memory; wav2lip continues with batches of %d.", self.batch_size)
                else:
                    log.warning("The GPU %s failed (%s); rendering the rest of this job on the CPU.",
                                self.device.describe(), _first_line(e))
                    self._move_to_cpu()
                continue
            self.count_frames(len(results[-1]), self.device)
            start += size
        return np.concatenate(results)

    def _forward(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        import torch

        assert self.model is not None, "prepare() loads the model"
        masked = faces.copy()
        masked[:, FACE_SIZE // 2:] = 0  # the generator must invent the lower half from the audio
        x = np.concatenate([masked, faces], axis=3).astype(np.float32) / 255.0
        dev = self.device.torch
        face_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dev)
        mel_t = torch.from_numpy(np.ascontiguousarray(mels)).to(dev)
        with torch.inference_mode():
            with self.device.autocast():
                pred = self.model(mel_t, face_t)
            pred = pred.float().clamp_(0, 1).mul_(255).round_().to(torch.uint8)
            return pred.permute(0, 2, 3, 1).cpu().numpy()

    def _release_gpu_memory(self) -> None:
        release_cached_memory(self.device)

    def _move_to_cpu(self) -> None:
        """The model again from its checkpoint, on the CPU in FP32 (a failed CUDA context cannot be
        copied from)."""
        from lipdub.render.wav2lip.checkpoint import load_wav2lip

        self.model = None
        self._release_gpu_memory()
        self.device = cpu_device()
        self.model = load_wav2lip(self.weights, self.device.torch)

    # -- geometry ----------------------------------------------------------------------------------

    def _box_in_crop(self, task: FrameTask) -> tuple[int, int, int, int] | None:
        """The face box of this output frame in crop pixels, clipped to the crop; None without a face."""
        h, w = task.crop.shape[:2]
        if task.landmarks is None:
            return None
        box = None
        if 0 <= task.out_index < len(self.boxes) and np.isfinite(self.boxes[task.out_index]).all():
            fx0, fy0 = task.box[0], task.box[1]
            bx0, by0, bx1, by1 = self.boxes[task.out_index]
            box = (bx0 - fx0, by0 - fy0, bx1 - fx0, by1 - fy0)
        if box is None:  # the avatar's plan has no face here, but the task does: box it alone
            raw = face_box(task.landmarks)
            if raw is None:
                return None
            box = tuple(raw)
        x0, y0 = max(0, int(round(box[0]))), max(0, int(round(box[1])))
        x1, y1 = min(w, int(round(box[2]))), min(h, int(round(box[3])))
        if x1 - x0 < 8 or y1 - y0 < 8:  # a sliver at the crop edge: nothing sensible to generate
            return None
        return x0, y0, x1, y1

    def _composite(self, task: FrameTask, box: tuple[int, int, int, int], pred: np.ndarray) -> RenderedCrop:
        x0, y0, x1, y1 = box
        crop = task.crop.copy()
        crop[y0:y1, x0:x1] = cv2.resize(pred, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
        assert task.landmarks is not None
        # lipdub's mouth-and-jaw mask, limited to where the upscaled face was pasted.
        alpha = lower_face_mask(task.landmarks, crop.shape[:2]) * box_feather(crop.shape[:2], box)
        return RenderedCrop(crop, alpha.astype(np.float32))


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def face_box(landmarks: np.ndarray) -> np.ndarray | None:
    """(x0, y0, x1, y1) float: cheek to cheek, upper forehead to a little below the chin.

    Wav2Lip was trained on face-detector boxes, whose top sits between the hairline and the brows
    (the mesh reaches higher) and which run slightly past the chin; this box imitates that framing
    so the masked lower half of the 96x96 input starts near the nose, as in training.
    """
    pts = np.asarray(landmarks, np.float64)
    if pts.ndim != 2 or len(pts) <= max(_BROWS) or not np.isfinite(pts).all():
        return None
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    brow = pts[_BROWS, 1].mean()
    top = y0 + FOREHEAD_TRIM * max(0.0, brow - y0)
    return np.array([x0, top, x1, y1 + CHIN_MARGIN * (y1 - top)])


def plan_face_boxes(landmarks: np.ndarray, template_indices: np.ndarray,
                    window: int = BOX_SMOOTH_FRAMES) -> np.ndarray:
    """(n_out, 4) face boxes in frame pixels for every output frame, NaN where there is no face.

    Boxes are averaged over a centred window of output frames that have a face, so the 96x96 crop
    does not jitter with landmark noise (a jittering crop makes the generated mouth swim).
    """
    idx = np.asarray(template_indices, np.int64)
    raw = np.full((len(idx), 4), np.nan)
    for j, t in enumerate(idx):
        if 0 <= t < len(landmarks):
            b = face_box(landmarks[t])
            if b is not None:
                raw[j] = b
    found = np.isfinite(raw[:, 0])
    if window <= 1 or not found.any():
        return raw
    # Moving sums over frames with a face only (NaN frames count neither in value nor in weight).
    k = np.ones(window)
    vals = np.where(found[:, None], raw, 0.0)
    sums = np.stack([np.convolve(vals[:, c], k, mode="same") for c in range(4)], axis=1)
    counts = np.convolve(found.astype(np.float64), k, mode="same")[:, None]
    smooth = sums / np.maximum(counts, 1)
    smooth[~found] = np.nan
    return smooth


def box_feather(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """1 inside ``box`` ramping to 0 at its edges (0 outside), so no seam shows where the upscaled face ends."""
    h, w = shape
    x0, y0, x1, y1 = box
    ramp = max(1, int(0.06 * min(x1 - x0, y1 - y0)))

    def axis(n: int, a: int, b: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float32) + 0.5
        return np.clip(np.minimum(i - a, b - i) / ramp, 0, 1)

    return np.outer(axis(h, y0, y1), axis(w, x0, x1)).astype(np.float32)
