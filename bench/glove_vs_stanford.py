"""embedpipe's GloVe against the Stanford GloVe C tool, on the same tokens and cores.

Both sides read exactly the same token sequences: embedpipe's corpus stages tokenise the
corpus and count co-occurrences (Spark); the Stanford tools (`vocab_count`, `cooccur`,
`shuffle`, `glove`, whose build directory you pass: neither their code nor a build script
is part of this repository) read a space-separated copy of those tokens. Settings are
the same on both sides: min_count 5, symmetric window 10 with 1/distance weights, dim 100,
x_max 10, alpha 0.75, AdaGrad learning rate 0.05, 15 iterations, W + C as the vectors.

It prints training time, entries/s and WordSim-353, SimLex-999 and Google-analogy
scores for both, and writes bench/results/glove_vs_stanford.json.

Usage: python bench/glove_vs_stanford.py --corpus /work/bench-data/corpus-10m.txt \
           --glove-bin /path/to/GloVe/build [--workdir /work/bench-data/train-work]
           [--threads 2] [--runs 1x2 2x1] [--batch-size 1048576]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from embedpipe.train.registry import GloVeConfig
from embedpipe.workdir import Workdir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_vs_gensim import prepare, scores, write_tokens_text  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "glove_vs_stanford.json"
SETTINGS = {"min_count": 5, "window": 10, "dim": 100, "x_max": 10.0, "alpha": 0.75,
            "eta": 0.05, "iterations": 15}  # fmt: skip


def run_stanford(tools: Path, tokens: Path, out: Path, threads: int, seed: int) -> dict[str, Any]:
    """vocab_count | cooccur | shuffle | glove; returns times and the vectors' scores."""
    out.mkdir(parents=True, exist_ok=True)
    vocab, cooc, shuf, vectors = (out / n for n in ("vocab.txt", "cooc.bin", "shuf.bin", "vectors"))
    s = SETTINGS

    def step(args: list[str], stdin: Path, stdout: Path | None) -> float:
        start = time.perf_counter()
        with stdin.open("rb") as fin, stdout.open("wb") if stdout else open(os.devnull, "wb") as fo:
            subprocess.run(args, stdin=fin, stdout=fo, stderr=subprocess.DEVNULL, check=True)
        return time.perf_counter() - start

    counting = step(
        [str(tools / "vocab_count"), "-min-count", str(s["min_count"]), "-verbose", "0"],
        tokens,
        vocab,
    )
    counting += step(
        [
            str(tools / "cooccur"),
            "-memory",
            "4.0",
            "-vocab-file",
            str(vocab),
            "-verbose",
            "0",
            "-window-size",
            str(s["window"]),
        ],
        tokens,
        cooc,
    )
    counting += step(
        [str(tools / "shuffle"), "-memory", "4.0", "-verbose", "0", "-seed", str(seed)], cooc, shuf
    )
    training = step([str(tools / "glove"), "-save-file", str(vectors), "-threads", str(threads),
                     "-input-file", str(shuf), "-x-max", str(s["x_max"]), "-alpha", str(s["alpha"]),
                     "-eta", str(s["eta"]), "-iter", str(s["iterations"]), "-vector-size", str(s["dim"]),
                     "-binary", "0", "-model", "2", "-vocab-file", str(vocab), "-verbose", "0",
                     "-seed", str(seed)],
                    tokens, None)  # fmt: skip
    words, rows = [], []
    with (out / "vectors.txt").open(encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(" ")
            if parts[0] != "<unk>":
                words.append(parts[0])
                rows.append(np.asarray(parts[1:], dtype=np.float32))
    entries = os.path.getsize(cooc) // 16  # (int, int, double) records
    return {
        "seed": seed,
        "counting_seconds": round(counting, 2),
        "training_seconds": round(training, 2),
        "entries": entries,
        "entries_per_sec": round(entries * s["iterations"] / training),
        **scores(np.stack(rows), words),
    }


def run_embedpipe(
    workdir: Path,
    nproc: int,
    threads: int,
    batch_size: int | None,
    seed: int,
    iterations: int = SETTINGS["iterations"],
) -> dict[str, Any]:
    """`nproc` processes (DDP) x `threads` Hogwild kernel threads each."""
    from safetensors.numpy import load_file

    s = SETTINGS
    out = workdir / f"train-glove-{nproc}x{threads}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "embedpipe.train", "--out", str(out), "--set", f"workdir={workdir}",
        "--set", "train.model=glove", "--set", f"train.epochs={iterations}",
        "--set", f"train.glove.dim={s['dim']}", "--set", f"train.glove.x_max={s['x_max']}",
        "--set", f"train.glove.alpha={s['alpha']}", "--set", f"train.glove.lr={s['eta']}",
        "--set", "train.log_every=1000000", "--set", f"train.threads={threads}",
        "--set", "train.checkpoint_every=0", "--set", f"train.seed={seed}",
    ]  # fmt: skip
    if batch_size is not None:  # otherwise the default, which is what a user gets
        command += ["--set", f"train.glove.batch_size={batch_size}"]
    subprocess.run(["rm", "-rf", str(out)], check=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    summary = json.loads((out / "_TRAINED.json").read_text())
    weights = load_file(str(out / "checkpoints" / summary["checkpoint"] / "model.safetensors"))
    vocab = pq.read_table(Workdir(str(workdir)).table_path("vocab"))
    vocab = vocab.sort_by("id").column("token").to_pylist()
    return {
        "seed": seed,
        "processes": nproc,
        "threads": threads,
        "batch_size": batch_size or GloVeConfig().batch_for("cpu"),
        "training_seconds": summary["seconds"],
        "entries_per_sec": summary["words_per_sec"],
        "bytes_per_word": summary.get("bytes_per_word", 0),  # exchanged a trained entry
        **scores(weights["input"], vocab),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--glove-bin", type=Path, required=True, help="Stanford GloVe build dir")
    parser.add_argument("--workdir", type=Path, default=Path("/work/bench-data/train-work"))
    parser.add_argument("--threads", type=int, default=2, help="the Stanford tool's threads")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["1x2", "2x1"],
        help="embedpipe runs as PROCESSESxTHREADS (default: 1 process x 2 threads, 2 x 1)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="entries per rank and step (default: train.glove.batch_size's default)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[1], help="one run of each side per seed"
    )
    args = parser.parse_args()

    manifests = prepare(args.corpus, args.workdir, ("tokenize", "build_vocab", "encode", "cooccur"))
    tokens = write_tokens_text(args.workdir)
    runs: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:
        out = args.workdir / "stanford-glove"
        name = f"Stanford {args.threads} threads"
        runs.setdefault(name, []).append(
            run_stanford(args.glove_bin, tokens, out, args.threads, seed)
        )
        for run in args.runs:
            nproc, threads = map(int, run.split("x"))
            name = f"embedpipe {nproc}p x {threads}t"
            runs.setdefault(name, []).append(
                run_embedpipe(args.workdir, nproc, threads, args.batch_size, seed)
            )
    keys = ("training_seconds", "entries_per_sec", "wordsim353", "simlex999", "analogy")
    means = {
        name: {k: float(np.mean([r[k] for r in rs])) for k in keys} for name, rs in runs.items()
    }
    results = {"corpus_tokens": manifests["tokenize"]["counts"]["tokens"], "settings": SETTINGS,
               "cpus": os.cpu_count(), "seeds": args.seeds, "batch_size": args.batch_size or GloVeConfig().batch_for("cpu"),
               "runs": runs, "means": means, "cooccur_entries": manifests["cooccur"]["counts"]}  # fmt: skip
    print(
        f"{'':24s}{'seed':>5s}{'train s':>9s} {'entries/s':>11s} {'WS353':>7s} {'SimLex':>7s} "
        f"{'analogy':>8s}"
    )
    for name, rs in runs.items():
        for r in [*rs, {**means[name], "seed": "mean"}] if len(rs) > 1 else rs:
            print(f"{name:24s}{r['seed']:>5}{r['training_seconds']:>9.1f} "
                  f"{round(r['entries_per_sec']):>11,} {r['wordsim353']:>7.3f} "
                  f"{r['simlex999']:>7.3f} {r['analogy']:>8.3f}")  # fmt: skip
    stanford = means[f"Stanford {args.threads} threads"]
    for name, m in means.items():
        if name.startswith("embedpipe"):
            gaps = ", ".join(f"{k} {m[k] - stanford[k]:+.3f}" for k in keys[2:])
            print(f"{name}: {m['entries_per_sec'] / stanford['entries_per_sec']:.2f}x the "
                  f"Stanford tool's entries/s; scores minus Stanford's: {gaps}")  # fmt: skip
    for r in (r for name, rs in runs.items() if name.startswith("embedpipe") for r in rs):
        if r["processes"] > 1:
            print(f"bytes exchanged per entry, {r['processes']} processes: {r['bytes_per_word']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
