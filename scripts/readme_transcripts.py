"""Regenerate the README's command transcripts from a fresh run, so they cannot drift.

Each transcript in README.md is a fenced block right after a marker line
`<!-- transcript:NAME -->`; NAME is a recipe below: the commands it runs (in a fresh
directory holding the repository's `configs/` and `data/`, so the run starts from nothing)
and which lines of their output the README keeps.

    python scripts/readme_transcripts.py            # rerun every recipe, rewrite README.md
    python scripts/readme_transcripts.py --check    # rerun, exit 1 if the README's blocks
                                                    # differ in shape (numbers and words
                                                    # that vary between runs are masked)
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- transcript:([\w-]+) -->$")
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ")  # Prefect's log lines
WIDTH = 150  # longer log lines are cut, with "..."
PREFECT_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_COLORS": "false"}


@dataclass(frozen=True)
class Recipe:
    """Commands run one after another (the first may be timed) and the lines kept of each."""

    commands: tuple[str, ...]
    keep: Callable[[str, list[str]], list[str]] = lambda command, lines: lines
    timed: bool = False  # note the first command's wall time in its prompt line
    needs: tuple[str, ...] = field(default_factory=tuple)  # recipes whose output this reads


def keep_demo(command: str, lines: list[str]) -> list[str]:
    """The stage summaries, the layout, the last step, the training summary and the result."""
    wanted = re.compile(r"Task run '(tokenize|build_vocab|encode)' - \S+ ran|layout:|\"steps\":")
    steps = [line for line in lines if re.search(r" - step \d+ epoch", line)]
    kept = ["..."]
    for line in lines:
        if wanted.search(line):
            if '"steps":' in line and steps:
                kept += ["...", steps[-1]]
            kept.append(line)
    start = next(i for i, line in enumerate(lines) if line.startswith("Published "))
    result = []
    for line in lines[start:]:
        if LOG_LINE.match(line):
            break
        result.append(line)
    return [cut(line) for line in kept] + ["...", *result]


def cut(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."


RECIPES: dict[str, Recipe] = {
    "demo": Recipe(("embedpipe run --config configs/sample.toml",), keep_demo, timed=True),
    "neighbors": Recipe(("embedpipe neighbors wordnet-sample king -k 5",), needs=("demo",)),
}


def run_recipe(name: str, cwd: Path) -> list[str]:
    """The transcript lines of recipe `name`, run in `cwd`."""
    recipe = RECIPES[name]
    env = {**os.environ, **PREFECT_ENV, "COLUMNS": "200", "NO_COLOR": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    out: list[str] = []
    for i, command in enumerate(recipe.commands):
        started = time.perf_counter()
        done = subprocess.run(
            shlex.split(command), cwd=cwd, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{name}: `{command}` failed ({done.returncode}):\n{done.stdout}")
        lines = done.stdout.splitlines()
        prompt = f"$ {command}"
        if recipe.timed and i == 0:
            prompt += f"    # {seconds:.0f} s on this machine, warm install"
        out += [prompt, *recipe.keep(command, lines)]
    return out


def fresh_directory() -> Path:
    """A new directory with the repository's configs and data: every run starts from nothing."""
    where = Path(tempfile.mkdtemp(prefix="embedpipe-transcripts-"))
    shutil.copytree(ROOT / "configs", where / "configs")
    (where / "data").symlink_to(ROOT / "data")
    return where


def blocks(text: str) -> dict[str, tuple[int, int]]:
    """{recipe: (first, end) line indices of its fenced block's body} in the README's lines."""
    lines = text.splitlines()
    found: dict[str, tuple[int, int]] = {}
    for i, line in enumerate(lines):
        match = MARKER.match(line)
        if match is None:
            continue
        if match.group(1) not in RECIPES:
            raise SystemExit(f"README.md:{i + 1}: no recipe named {match.group(1)!r}")
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            raise SystemExit(f"README.md:{i + 2}: a fenced block must follow the marker")
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        found[match.group(1)] = (i + 2, end)
    return found


def shape(line: str) -> str:
    """What must not change between runs: numbers, clock times and neighbour words masked."""
    line = re.sub(r"(Task run '\w+)-[0-9a-f]{3}'", r"\1-ID'", line)  # Prefect's run suffix
    if len(line) == WIDTH and line.endswith("..."):  # `cut`: where it falls moves with the
        line = re.sub(r"[^\s,:{}\[\]\"]*\.\.\.$", "...", line)  # numbers' widths before it
    line = re.sub(r"\d+(?:[.,:]\d+)*", "N", line)
    scored = re.match(r"^([+-]?N)\s{2,}\S+$", line)  # `neighbors`: score, word
    if scored:
        return scored.group(1) + "  WORD"
    neighbours = re.match(r"^(\s+\w+)\s{2,}\S.*$", line)  # report: query, its neighbours
    return neighbours.group(1) + " ..." if neighbours else line


def order(names: list[str]) -> list[str]:
    """Recipes in an order that runs each one's `needs` first."""
    ordered: list[str] = []
    for name in names:
        for need in (*RECIPES[name].needs, name):
            if need not in ordered:
                ordered.append(need)
    return ordered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not rewrite")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    found = blocks(text)
    cwd = fresh_directory()
    try:
        fresh = {name: run_recipe(name, cwd) for name in order(list(found))}
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    lines = text.splitlines()
    if args.check:
        drifted = [
            name for name, (a, b) in found.items()
            if [shape(x) for x in lines[a:b]] != [shape(x) for x in fresh[name]]
        ]  # fmt: skip
        for name in drifted:
            print(
                f"README.md transcript {name!r} differs from a fresh run:", *fresh[name], sep="\n"
            )
        return 1 if drifted else 0
    for name, (a, b) in sorted(found.items(), key=lambda item: -item[1][0]):
        lines[a:b] = fresh[name]
    args.readme.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
