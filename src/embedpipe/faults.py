"""Named crash points, so the fault-injection suite can kill a process exactly where it hurts.

Code that commits something (a stage, a publish, an alias move, a gc, a checkpoint) calls
`crash_point("name")` between its steps. When the environment variable `EMBEDPIPE_CRASH_AT`
names that point the process SIGKILLs itself there, as an operator's `kill -9` or a lost
node would: no `finally`, no atexit. `name@N` kills at the point's N-th hit in the process
(1-based). Unset, a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

CRASH_AT = "EMBEDPIPE_CRASH_AT"
_hits: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """SIGKILL this process here when `EMBEDPIPE_CRASH_AT` is `name` or `name@<this hit>`."""
    target = os.environ.get(CRASH_AT)
    if not target:
        return
    point, _, nth = target.partition("@")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
