"""Child processes: output streamed line by line, and the whole tree ended when interrupted."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedpipe.processes import alive, descendants, end_tree, run_logged


def test_lines_of_both_streams_reach_the_log_as_they_come() -> None:
    script = (
        "import sys, time\n"
        "print('one', flush=True); time.sleep(0.3)\n"
        "print('warn', file=sys.stderr, flush=True)\n"
        "print('two', flush=True); sys.exit(3)\n"
    )
    seen: list[tuple[float, str]] = []
    done = run_logged(
        [sys.executable, "-c", script],
        lambda line: seen.append((time.monotonic(), line)),
        prefix="> ",
    )
    assert done.returncode == 3
    assert done.stdout == ["one", "two"] and done.stderr == ["warn"]
    lines = [line for _, line in seen]
    assert sorted(lines) == ["> one", "> two", "> warn"]
    assert lines.index("> one") < lines.index("> two")  # each stream in its own order
    # "one" was logged while the child still slept, not when it ended.
    assert seen[lines.index("> one")][0] < seen[lines.index("> two")][0] - 0.2
    assert "warn" in done.tail()


def test_a_timeout_ends_children_and_their_detached_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
        " start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(g.pid))\n"
        "print('started', flush=True); time.sleep(120)\n"
    )
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        run_logged([sys.executable, "-c", script], lines.append, timeout=4)
    assert time.monotonic() - started < 40
    assert lines == ["started"]
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild)


def test_descendants_lists_the_tree_below_a_process() -> None:
    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "print('ready', flush=True); time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        below = descendants(parent.pid)
        assert len(below) == 1 and alive(below[0])
    finally:
        end_tree(parent.pid, grace=5)
    assert not alive(parent.pid) and not alive(below[0])
