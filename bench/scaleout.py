"""Distribution on the same cores, and a projection to clusters from what was measured.

Part 1, measured (same machine, same cores, one run each, interleaved per model): for
sgns, cbow and glove (and the masked LM on the 1M-token prefix), `--nproc` processes x 1
thread against 1 process x `--nproc` threads. Rates are words/s (sgns, cbow), entries/s
(glove) or tokens/s (mlm) over the whole run; bytes per word are what a rank sent (row ids
gathered + values reduced) per corpus unit it trained; scores are WordSim-353, SimLex-999
and Google analogies (held-out perplexity for mlm). Target: same-core ratio >= 0.9.

Part 2, projected: N nodes, each training like the measured single process (rate R words/s)
and exchanging every `sync_every` words it trains (S). The model, stated:
- compute per interval T_c = S / R;
- payload per exchange: the rows any of the N nodes touched in the interval x width x 4
  bytes (+ 4-byte row ids). The chance that one node's interval touches row r comes from
  the vocabulary table itself (input rows: the kept tokens, count x keep_prob; output rows:
  the same centres plus `negatives` noise draws per centre from noise_prob), so the union
  over N nodes is sum_r 1 - (1 - p_r)^N; at N = 2 it is checked against the measured bytes.
  With `sync_hot_rows` H and `sync_rare_every` K, an exchange carries the hot rows (ids < H)
  touched in S words, and every K-th one the other rows touched in K x S words: the payload
  per exchange is the hot union plus a K-th of the rare union;
- ring all-reduce: 2 (N - 1) / N x payload / bandwidth + 2 (N - 1) x 50 us latency, plus the
  row-id all-gather (N - 1) x ids / bandwidth;
- the exchange of interval t runs while the first share `sync_overlap` (O) of interval
  t + 1 trains and is applied there (`sync.RowSync.settle`): the training thread waits
  max(0, T_comm - O x T_c), and an interval costs T_c + that wait + T_apply, T_apply being
  the cost of a boundary on the training thread (the snapshot of the rank's rows and one
  pass over the union rows), timed here;
- the exchange's own CPU work (gloo's copies on loopback, the union, the base update) runs
  on cores the node does not train on: on the same cores (part 1) it competes with training;
- efficiency E(N) = T_c / (T_c + max(0, T_comm - O x T_c) + T_apply). Target: E(16) >= 0.8
  at 25 Gb/s.

Usage: python bench/scaleout.py --corpus /work/bench-data/corpus-10m.txt \
           [--workdir /work/bench-data/train-work] [--models sgns cbow glove mlm] [--nproc 2]
           [--epochs 1] [--set train.sgns.sync_every=N]
Writes bench/results/scaleout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from embedpipe.workdir import Workdir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_vs_gensim import prepare, scores  # noqa: E402

from embedpipe.train.registry import MLMConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "scaleout.json"
NODES = (2, 4, 8, 16, 32, 64)
LINKS_GBIT = (10, 25, 100)
LATENCY = 50e-6  # seconds per ring hop
TIMINGS = ("exchange_seconds", "exchange_cpu_seconds", "boundary_seconds", "wait_seconds")
# Settings as bench/train_vs_gensim.py and bench/glove_vs_stanford.py use them.
MODEL_SETTINGS = {
    "sgns": ["train.sgns.dim=100", "train.sgns.window=5", "train.sgns.negatives=5"],
    "cbow": ["train.cbow.dim=100", "train.cbow.window=5", "train.cbow.negatives=5"],
    "glove": ["train.glove.dim=100", "train.glove.x_max=10.0"],
    "mlm": [],
}


def run(workdir: Path, model: str, nproc: int, threads: int, extra: list[str]) -> dict[str, Any]:
    """One torchrun of `model`; its summary, and its scores from the final checkpoint."""
    from safetensors.numpy import load_file

    out = workdir / f"scaleout-{model}-{nproc}x{threads}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "embedpipe.train", "--out", str(out),
        "--set", f"workdir={workdir}", "--set", f"train.model={model}",
        "--set", f"train.nproc={nproc}", "--set", f"train.threads={threads}",
        "--set", "train.log_every=1000000",
        *(arg for item in MODEL_SETTINGS[model] + extra for arg in ("--set", item)),
    ]  # fmt: skip
    subprocess.run(["rm", "-rf", str(out)], check=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    summary = json.loads((out / "_TRAINED.json").read_text())
    result = {
        "processes": nproc,
        "threads": threads,
        "rate": summary["words_per_sec"],
        "training_seconds": summary["seconds"],
        "command_seconds": round(time.perf_counter() - start, 2),
        "bytes_per_word": summary.get("bytes_per_word", 0),
        "bytes_per_sync": summary.get("bytes_per_sync", 0),
        "syncs": summary.get("syncs", 0),
        # rank 0's: the exchange thread's time and CPU, the training thread's snapshots and
        # applies, and its waits for an exchange still running (sync.RowSync.summary)
        **{k: summary.get(k, 0) for k in TIMINGS},
    }
    if model == "mlm":
        last = summary["heldout"][-1] if summary.get("heldout") else {}
        return {**result, "heldout_perplexity": last.get("perplexity")}
    weights = load_file(str(out / "checkpoints" / summary["checkpoint"] / "model.safetensors"))
    vocab = pq.read_table(Workdir(str(workdir)).table_path("vocab"))
    vocab = vocab.sort_by("id").column("token").to_pylist()
    return {**result, **scores(weights["input"], vocab)}


def touch_probabilities(workdir: Path, words: int, negatives: int) -> dict:
    """Per row, the chance that one node's interval of `words` corpus words touches it."""
    vocab = pq.read_table(
        Workdir(str(workdir)).table_path("vocab"), columns=["count", "keep_prob", "noise_prob"]
    )
    counts = vocab.column("count").to_numpy().astype(np.float64)
    kept = counts * vocab.column("keep_prob").to_numpy()
    p_token = kept / kept.sum()
    kept_words = words * kept.sum() / counts.sum()
    # A row is touched when it occurs in the interval (input: as a token in a window;
    # output: as a centre), or is drawn as a negative (output).
    p_in = 1 - np.exp(-kept_words * p_token)
    draws = kept_words * negatives
    p_out = 1 - np.exp(-kept_words * p_token - draws * vocab.column("noise_prob").to_numpy())
    return {"input": p_in, "output": p_out}


def project(
    rate: float,
    sync_words: int,
    width: int,
    rows: Callable[[int], tuple[float, float]],
    apply_seconds: float,
    overlap: float = 1.0,
) -> list[dict[str, Any]]:
    """Efficiency at each cluster size and link speed (the model in the module doc);
    `rows(nodes)` is (rows one node sends, rows of the union) per exchange, on average."""
    out = []
    for nodes in NODES:
        mine, union = rows(nodes)
        payload = union * width * 4
        for gbit in LINKS_GBIT:
            bandwidth = gbit * 1e9 / 8
            ring = 2 * (nodes - 1) / nodes * payload / bandwidth + 2 * (nodes - 1) * LATENCY
            gather = (nodes - 1) * mine * 4 / bandwidth
            compute = sync_words / rate
            comm = ring + gather
            wait = max(0.0, comm - overlap * compute)
            efficiency = compute / (compute + wait + apply_seconds)
            out.append(
                {"nodes": nodes, "gbit": gbit, "union_rows": round(union),
                 "payload_mb": round(payload / 1e6, 2), "compute_ms": round(compute * 1e3, 1),
                 "comm_ms": round(comm * 1e3, 1), "efficiency": round(efficiency, 3),
                 "words_per_sec": round(nodes * rate * efficiency)}
            )  # fmt: skip
    return out


def rows_per_exchange(
    workdir: Path, sync: int, negatives: int, hot: int, rare_every: int
) -> Callable[[int], tuple[float, float]]:
    """(mine, union) rows of an exchange at N nodes, hot and rare rows as `RowSync` sends them."""
    hot = hot or 1 << 62  # 0: every row is hot
    often = touch_probabilities(workdir, sync, negatives)
    seldom = touch_probabilities(workdir, sync * rare_every, negatives)

    def rows(nodes: int) -> tuple[float, float]:
        mine = union = 0.0
        for table in often:
            p_hot, p_rare = often[table][:hot], seldom[table][hot:]
            mine += float(p_hot.sum()) + float(p_rare.sum()) / rare_every
            union += float((1 - (1 - p_hot) ** nodes).sum())
            union += float((1 - (1 - p_rare) ** nodes).sum()) / rare_every
        return mine, union

    return rows


def apply_cost(width: int, mine_rows: float, union_rows: float) -> float:
    """Seconds a boundary costs the training thread, timed with `sync.RowSync`'s own
    kernels: the snapshot of this rank's rows and one pass over the union rows."""
    from embedpipe.train.kernels import add_rows, row_deltas

    n, m = max(1, int(union_rows)), max(1, int(mine_rows))
    rng = np.random.default_rng(0)
    table = rng.standard_normal((2 * n, width), dtype=np.float32)
    base = table.copy()
    union = np.sort(rng.permutation(2 * n)[:n])
    mine = np.sort(rng.choice(union, m, replace=False))
    others = rng.standard_normal((n, width), dtype=np.float32)
    delta = np.empty((m, width), dtype=np.float32)
    row_deltas(table, base, mine, delta)  # compiled before timing
    start = time.perf_counter()
    for _ in range(5):
        row_deltas(table, base, mine, delta)
        add_rows(table, union, others)
    return (time.perf_counter() - start) / 5


# max_tokens is per rank (DDP's local batch): the processes layout gets the one process's
# budget split over its ranks, so both layouts take the same steps on the same global batch.
EPOCHS = {"sgns": 5, "cbow": 5, "glove": 15, "mlm": 1}


def measure(args: argparse.Namespace, model: str, workdir: Path) -> dict[str, Any]:
    """Both layouts over `--seeds` seeds, interleaved; means and the same-core ratio."""
    epochs = args.epochs or EPOCHS[model]
    layouts = {"threads": (1, args.nproc), "processes": (args.nproc, 1)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in layouts}
    for seed in range(1, args.seeds + 1):
        for name, (nproc, threads) in layouts.items():
            extra = [f"train.epochs={epochs}", f"train.seed={seed}", *args.set]
            if model == "mlm" and nproc > 1:  # the same global batch, split over the ranks
                extra.append(f"train.mlm.max_tokens={MLMConfig().max_tokens // nproc}")
            runs[name].append(run(workdir, model, nproc, threads, extra))
    keys = [k for k in ("rate", "wordsim353", "simlex999", "analogy", "heldout_perplexity")
            if runs["threads"][0].get(k) is not None]  # fmt: skip
    means = {
        name: {k: round(float(np.mean([r[k] for r in rs])), 4) for k in keys} | {"runs": rs}
        for name, rs in runs.items()
    }
    return {
        "epochs": epochs,
        **means,
        "same_core_ratio": round(means["processes"]["rate"] / means["threads"]["rate"], 3),
        "bytes_per_word": runs["processes"][0]["bytes_per_word"],
        "bytes_per_sync": runs["processes"][0]["bytes_per_sync"],
    }


def print_model(model: str, row: dict[str, Any], nproc: int) -> None:
    unit = {"glove": "entries/s", "mlm": "tokens/s"}.get(model, "words/s")
    print(f"\n{model} ({row['epochs']} epochs): {unit}, scores (means)")
    for name, label in (("threads", f"1 process x {nproc} threads"),
                        ("processes", f"{nproc} processes x 1 thread")):  # fmt: skip
        r = row[name]
        shown = "  ".join(f"{k} {r[k]:.4f}" for k in r if k not in ("rate", "runs"))
        print(f"  {label:28s} {r['rate']:>12,.0f}  {shown}")
    print(f"  same-core ratio {row['same_core_ratio']:.3f} (target >= 0.9); "
          f"{row['bytes_per_word']:.1f} bytes a word, {row['bytes_per_sync'] / 1e6:.1f} MB a sync")  # fmt: skip


def print_projection(rows: list[dict[str, Any]]) -> None:
    print("  nodes " + "".join(f"{g:>9d} Gb/s" for g in LINKS_GBIT) + "   (efficiency)")
    for nodes in NODES:
        cells = [r for r in rows if r["nodes"] == nodes]
        print(f"  {nodes:5d} " + "".join(f"{c['efficiency']:>14.3f}" for c in cells)
              + f"   union {cells[0]['union_rows']:,} rows, {cells[0]['payload_mb']} MB")  # fmt: skip


def add_projection(row: dict[str, Any], model: str, workdir: Path, settings: list[str]) -> None:
    """The cluster projection of a word2vec model from its measured 1-process rate."""
    from embedpipe.train.registry import get_model

    options = get_model(model).section()
    prefix = f"train.{model}."
    given = {k.removeprefix(prefix): v for k, _, v in (s.partition("=") for s in settings)
             if k.startswith(prefix)}  # fmt: skip
    sync, hot, rare_every = (int(given.get(k, getattr(options, k)))
                             for k in ("sync_every", "sync_hot_rows", "sync_rare_every"))  # fmt: skip
    overlap = float(given.get("sync_overlap", options.sync_overlap))
    rows = rows_per_exchange(workdir, sync, options.negatives, hot, rare_every)
    mine, union = rows(2)
    row["predicted_bytes_per_sync_2"] = round(union * (options.dim * 4 + 4))
    apply = apply_cost(options.dim, mine, union)
    row["projection"] = project(row["threads"]["rate"], sync, options.dim, rows, apply, overlap)
    row["apply_seconds"] = round(apply, 5)


def reproject(args: argparse.Namespace) -> None:
    """Recompute the projections of an earlier run's results (no training)."""
    results = json.loads(RESULTS.read_text())
    for model, row in results["models"].items():
        if model in ("sgns", "cbow"):
            add_projection(row, model, args.workdir, args.set)
            print(f"{model}: boundary {row['apply_seconds'] * 1e3:.1f} ms on the training thread")
            print_projection(row["projection"])
    RESULTS.write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("/work/bench-data/train-work"))
    parser.add_argument("--models", nargs="+", default=["sgns", "cbow", "glove", "mlm"])
    parser.add_argument("--nproc", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--epochs", type=int, help="for every model (default: as the benches)")
    parser.add_argument("--seeds", type=int, default=1, help="runs of each layout, seeds 1..N")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--reproject", action="store_true", help="projections of the last run")
    args = parser.parse_args()
    if args.reproject:
        return reproject(args)

    manifests = prepare(args.corpus, args.workdir, ("tokenize", "build_vocab", "encode", "cooccur"))
    words = manifests["tokenize"]["counts"]["tokens"]
    # Models not run this time keep their last figures (each row says when it was run).
    earlier = json.loads(RESULTS.read_text())["models"] if RESULTS.exists() else {}
    results: dict[str, Any] = {"corpus_tokens": words, "cpus": os.cpu_count(),
                               "nproc": args.nproc, "models": earlier}  # fmt: skip
    for model in args.models:
        workdir = args.workdir
        if model == "mlm":  # the 1M-token prefix: a CPU epoch of the masked LM on 10M is long
            workdir = args.workdir.with_name(args.workdir.name + "-1m")
            prepare(args.corpus.with_name("corpus-1m.txt"), workdir,
                    ("tokenize", "build_vocab", "encode", "bucket"))  # fmt: skip
        row = measure(args, model, workdir) | {"measured": time.strftime("%Y-%m-%d")}
        if model in ("sgns", "cbow"):
            add_projection(row, model, workdir, args.set)
        results["models"][model] = row
        print_model(model, row, args.nproc)
        if "projection" in row:
            print(f"  bytes a sync at 2 ranks: measured {row['bytes_per_sync']:,}, "
                  f"predicted {row['predicted_bytes_per_sync_2']:,}")  # fmt: skip
            print_projection(row["projection"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
