"""The whole `embedpipe prepare` command against GloVe's `vocab_count` + `cooccur`.

What a user waits for: the command from launch to exit (interpreter, Spark's start-up,
every stage the model reads), not the stages alone (`corpus_stages.py` times those).
Both read the same text, embedpipe's own tokens of the corpus one line per line
(GloVe's tools split on whitespace only); the defaults but `vocab.min_count` 5 and
`cooccur.window` 10, GloVe's settings. Each side runs `--repeat` times, interleaved,
on a quiet machine; the fastest of each gives the ratio.

Bytecode, as `--bytecode` lists (default all four):
- `warm`: the install's own bytecode (`make install` compiles it).
- `first`: a container's first run: `PYTHONDONTWRITEBYTECODE` and an install without
  bytecode, so the command keeps it in its own cache (`embedpipe.bytecode`), empty here:
  every process compiles what it imports and writes it there. (A fresh cache folder per
  repeat stands for the uncompiled install; the few modules imported before the command
  sets its cache up are read from the install's bytecode.)
- `cached`: the same container's next run, reading the cache the `first` run filled.
- `none`: nothing cached, ever (`EMBEDPIPE_BYTECODE_CACHE=off` in that container, or a
  `PYTHONPYCACHEPREFIX` nobody writes): every process compiles from source every time.

Usage: python bench/prepare_whole.py [--corpus /work/bench-data/short-10m.txt]
       [--model glove] [--repeat 2] [--bytecode warm first cached none]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_stages import MIN_COUNT, WINDOW, pretokenize, run_glove, wait_quiet  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "prepare_whole.json"
EMBEDPIPE = Path(sys.executable).with_name("embedpipe")


BYTECODE = ("warm", "first", "cached", "none")


def run_prepare(
    tok: Path, workdir: Path, model: str, bytecode: str = "warm", cache: Path | None = None
) -> dict[str, Any]:
    """One whole `embedpipe prepare` from a fresh work dir: wall seconds and its stages.
    `cache`: the command's bytecode cache for `first` and `cached` (see the module doc)."""
    shutil.rmtree(workdir, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    with tempfile.TemporaryDirectory() as empty:
        if bytecode != "warm":
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        if bytecode in ("first", "cached"):
            env["EMBEDPIPE_BYTECODE_CACHE"] = str(cache)
        if bytecode == "none":
            env["PYTHONPYCACHEPREFIX"] = empty
        overrides = [
            f"workdir={workdir}",
            f'corpus.paths=["{tok}"]',
            f"vocab.min_count={MIN_COUNT}",
            f"cooccur.window={WINDOW}",
            f"train.model={model}",
        ]
        cmd = [str(EMBEDPIPE), "prepare", *[a for o in overrides for a in ("--set", o)]]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"embedpipe prepare failed:\n{proc.stderr[-3000:]}")
    stages = sorted(p.parent.name for p in workdir.glob("*/_MANIFEST.json"))
    return {"seconds": round(wall, 2), "tables": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/work/bench-data/short-10m.txt"))
    parser.add_argument("--out", type=Path, default=Path("/work/bench-data/out-prepare"))
    parser.add_argument("--glove-bin", type=Path, default=Path("/work/tools/glove/build"))
    parser.add_argument("--model", default="glove")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--bytecode", nargs="+", choices=BYTECODE, default=list(BYTECODE))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    tok = args.out / f"{args.corpus.stem}.tok.txt"
    if not tok.exists():
        print(f"pre-tokenising {args.corpus} -> {tok}", flush=True)
        pretokenize(args.corpus, tok)
    caches = [b for b in BYTECODE if b in args.bytecode]
    runs: dict[str, list[float]] = {cache: [] for cache in caches}
    glove: list[float] = []
    tables: list[str] = []
    run_prepare(tok, args.out / "warm-up", args.model)  # the OS's file cache
    for i in range(args.repeat):
        container = args.out / f"bytecode-{i}"  # empty until this repeat's `first` run
        shutil.rmtree(container, ignore_errors=True)
        for cache in caches:
            wait_quiet(120)
            result = run_prepare(tok, args.out / "embedpipe", args.model, cache, container)
            runs[cache].append(result["seconds"])
            tables = result["tables"]
            print(
                f"run {i + 1}: embedpipe prepare ({cache} bytecode) {result['seconds']:.2f} s",
                flush=True,
            )
        wait_quiet(120)
        glove.append(run_glove(args.glove_bin, tok, args.out / "glove")["seconds"])
        print(f"run {i + 1}: GloVe vocab_count + cooccur {glove[-1]:.2f} s", flush=True)
    result = {
        "what": "whole `embedpipe prepare` vs GloVe vocab_count + cooccur, same tokenised text",
        "corpus": str(args.corpus),
        "model": args.model,
        "tables": tables,
        "min_count": MIN_COUNT,
        "window": WINDOW,
        "machine": {"cpus": os.cpu_count()},
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip(),
        "glove_runs_s": glove,
        "embedpipe_runs_s": runs,
        "ratio_fastest": {cache: round(min(runs[cache]) / min(glove), 2) for cache in caches},
    }
    for cache in caches:
        print(
            f"{cache} bytecode: {min(runs[cache]):.2f} s / {min(glove):.2f} s = {result['ratio_fastest'][cache]}x"
        )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
