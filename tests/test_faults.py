import os
import subprocess
import sys

from embedpipe.faults import CRASH_AT, crash_point

SCRIPT = "from embedpipe.faults import crash_point\nfor i in range(3):\n    crash_point('p')\n    print(i, flush=True)\n"


def run(target: str | None) -> subprocess.CompletedProcess[str]:
    env = {CRASH_AT: target} if target else {}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env={**os.environ, **env}, capture_output=True, text=True
    )


def test_the_named_point_kills_at_its_nth_hit() -> None:
    first, third = run("p"), run("p@3")
    assert (first.returncode, first.stdout) == (-9, "")
    assert (third.returncode, third.stdout) == (-9, "0\n1\n")


def test_other_points_and_no_target_run_through() -> None:
    assert run("q").stdout == run(None).stdout == "0\n1\n2\n"
    crash_point("anything")  # unset in the test process: a no-op
