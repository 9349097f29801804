"""A job's log keeps what the render says and drops mediapipe's native warnings, which read like faults."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from studio_support import REPO

CHILD = textwrap.dedent('''
    import logging, os, sys
    from lipdub.studio.jobs.native_log import filter_native_noise

    restore = filter_native_noise()
    os.write(2, b"W0000 00:00:1796556257.463353   15488 inference_feedback_manager.cc:114] Feedback manager "
                b"requires a model with a single signature inference. Disabling support for feedback tensors.\\n")
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
    import numpy as np
    import mediapipe as mp
    mp.solutions.face_mesh.FaceMesh(refine_landmarks=True).process(np.zeros((64, 64, 3), np.uint8))
    logging.basicConfig(stream=sys.stderr, format="[%(levelname)s] %(message)s", level=logging.INFO)
    logging.getLogger("lipdub").warning("a real warning")
    os.write(2, b"E0000 a native error stays")
    sys.stderr.flush()
    restore()
    print("after restore", file=sys.stderr)
''')


def test_the_job_log_drops_mediapipes_feedback_manager_noise(tmp_path):
    log_path = tmp_path / "job.log"
    with open(log_path, "wb") as log_file:
        done = subprocess.run([sys.executable, "-c", CHILD], stdout=log_file, stderr=subprocess.STDOUT,
                              cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    text = log_path.read_text()
    assert done.returncode == 0, text
    assert "Feedback manager" not in text and "absl::InitializeLog" not in text
    assert "[WARNING] a real warning" in text
    assert "E0000 a native error stays" in text and text.rstrip().endswith("after restore")
