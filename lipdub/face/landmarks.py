"""Face mesh landmarks (mediapipe, 478 points with refined lips and irises), bundled with the wheel."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import numpy as np

log = logging.getLogger(__name__)

N_POINTS = 478

# Landmark indices of the mediapipe face mesh used across lipdub.
LIPS_OUTER_UPPER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIPS_OUTER_LOWER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
LIPS_INNER_UPPER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_INNER_LOWER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
JAW = [93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323]
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
NOSE_BASE = [98, 2, 327]
CHEEKS = [205, 425]
LEFT_EYE = [33, 160, 158, 133, 153, 144]  # the subject's right eye, on the image's left
RIGHT_EYE = [362, 385, 387, 263, 373, 380]
LEFT_EYE_UPPER, LEFT_EYE_LOWER = [246, 161, 160, 159, 158, 157, 173], [7, 163, 144, 145, 153, 154, 155]
RIGHT_EYE_UPPER, RIGHT_EYE_LOWER = [466, 388, 387, 386, 385, 384, 398], [249, 390, 373, 374, 380, 381, 382]
UPPER_LIP_INNER_MID, LOWER_LIP_INNER_MID = 13, 14
MOUTH_CORNERS = (61, 291)
CHIN = 152


def eye_centres(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lm[..., LEFT_EYE, :].mean(-2), lm[..., RIGHT_EYE, :].mean(-2)


def inter_ocular(lm: np.ndarray) -> np.ndarray:
    """Distance between the eye centres: lipdub's unit of face size."""
    a, b = eye_centres(lm)
    return np.linalg.norm(a - b, axis=-1)


def lip_gap(lm: np.ndarray) -> np.ndarray:
    """Inner-lip opening (mean of three vertical gaps) in pixels."""
    up = lm[..., [81, 13, 311], :]
    lo = lm[..., [178, 14, 402], :]
    return np.linalg.norm(up - lo, axis=-1).mean(-1)


class FaceMesh:
    """mediapipe's face mesh; ``track=True`` follows faces between consecutive frames (video)."""

    def __init__(self, track: bool = True, max_faces: int = 4) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging is noisy on stderr
        import mediapipe as mp

        with quiet_native_stderr():
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=not track, max_num_faces=max_faces, refine_landmarks=True,
                min_detection_confidence=0.5, min_tracking_confidence=0.5)
        self._warmed = False

    def detect(self, rgb: np.ndarray) -> list[np.ndarray]:
        """All faces in an RGB uint8 image, each as (478, 2) float32 pixel coordinates."""
        h, w = rgb.shape[:2]
        if not self._warmed:  # the first call prints TFLite/absl banners from C++ straight to fd 2
            with quiet_native_stderr():
                result = self._mesh.process(np.ascontiguousarray(rgb))
            self._warmed = True
        else:
            result = self._mesh.process(np.ascontiguousarray(rgb))
        faces = []
        for face in result.multi_face_landmarks or []:
            pts = np.array([(p.x * w, p.y * h) for p in face.landmark], np.float32)
            faces.append(pts)
        return faces

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FarFaceDetector:
    """mediapipe's full-range face detector (faces up to about 5 m from the camera): finds faces too small
    in the frame for the mesh's own detector, which is made for faces within 2 m (a tenth of a wide
    shot's width is beyond it)."""

    def __init__(self, min_confidence: float = 0.5) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")
        import mediapipe as mp

        with quiet_native_stderr():
            self._detector = mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=min_confidence)
        self._warmed = False

    def boxes(self, rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Every face's box (x0, y0, x1, y1) in ``rgb``'s pixels, most confident first."""
        h, w = rgb.shape[:2]
        image = np.ascontiguousarray(rgb)
        if not self._warmed:
            with quiet_native_stderr():
                result = self._detector.process(image)
            self._warmed = True
        else:
            result = self._detector.process(image)
        found = []
        for d in result.detections or []:
            b = d.location_data.relative_bounding_box
            score = float(d.score[0]) if d.score else 0.0
            found.append((score, (b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h)))
        return [box for _, box in sorted(found, key=lambda f: -f[0])]

    def close(self) -> None:
        self._detector.close()

    def __enter__(self) -> FarFaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence C/C++ writes to file descriptor 2 (mediapipe's start-up banners) for a moment."""
    if os.environ.get("LIPDUB_DEBUG_NATIVE"):
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)
