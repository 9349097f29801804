"""A phone-recognition worker: ``python -m lipdub.audio.phone_worker``, started by
:class:`lipdub.audio.phones.Recogniser`. Reads (samples, rate, offset, lw) jobs from stdin and writes
each job's phones to stdout, both as length-prefixed pickles, until stdin closes."""

from __future__ import annotations

import os
import sys

from lipdub.audio.phones import _receive, _send, recognise


def main() -> int:
    inp = sys.stdin.buffer
    # Answers go to a private copy of stdout; anything a library prints lands on stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    while True:
        try:
            x, sr, offset_s, lw = _receive(inp)
        except EOFError:
            return 0
        _send(out, recognise(x, sr, offset_s, lw))


if __name__ == "__main__":
    sys.exit(main())
