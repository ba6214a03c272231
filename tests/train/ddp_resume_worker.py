"""``haloscope train`` under torchrun that stops itself with a real SIGTERM at a given step.

``KILL_AT=N`` (environment): every rank sends itself SIGTERM during global step N of this
process (1-based), as a scheduler's preemption would; the trainer saves last.pt and exits.
Used by ``test_ddp.py``; argv is ``haloscope train``'s.
"""

from __future__ import annotations

import os
import signal
import sys

from haloscope.train import step as tstep
from haloscope.train.cli import main

if __name__ == "__main__":
    kill_at = int(os.environ.get("KILL_AT", "0"))
    if kill_at:
        real, calls = tstep.train_step, {"n": 0}

        def step_then_signal(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == kill_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kwargs)

        tstep.train_step = step_then_signal
    sys.exit(main(sys.argv[1:]))
