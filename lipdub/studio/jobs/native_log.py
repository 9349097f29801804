"""Keep known native-library noise out of a job's log: mediapipe's C++ code writes warnings straight to file
descriptor 2 that no Python logging setting reaches (``W0000 ... Feedback manager requires a model with a
single signature inference``, twice per face mesh), and a user reading the log takes them for a fault."""

from __future__ import annotations

import faulthandler
import os
import re
import threading
from collections.abc import Callable

NOISE = re.compile(rb"^(W0000 .*inference_feedback_manager\.cc:\d+\] Feedback manager requires a model"
                   rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)")


def filter_native_noise() -> Callable[[], None]:
    """Route this process's file descriptor 2 through a thread that drops the NOISE lines and copies every
    other line to where descriptor 2 pointed before; returns the function that puts it back and flushes.
    A crash's traceback (faulthandler) is written to the original descriptor directly, so it is never lost
    in the pipe."""
    target = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    faulthandler.enable(file=target, all_threads=True)

    def write(data: bytes) -> None:
        try:
            os.write(target, data)
        except OSError:  # the log's disk is full: drop the text, but keep draining, or the render would block
            pass

    def copy() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
                if kept:
                    write(kept)
        if pending and not NOISE.match(pending):
            write(pending)

    thread = threading.Thread(target=copy, name="native-log-filter", daemon=True)
    thread.start()

    def restore() -> None:
        os.dup2(target, 2)  # closes the pipe's last write end: the thread reads to its end and stops
        thread.join(5.0)
        os.close(target)

    return restore
