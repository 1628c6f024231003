"""The causal LM against the unigram model and the masked LM: held-out perplexity.

Both models train through the trainer itself (`loop.train`, in-process, one rank) with the
same Transformer settings (layers, heads, width, ffn, max_len, token budget, AdamW,
schedule, seed) on the same sequences: the first sequences of every bucket of a prepared
workdir's `buckets` table, `--tokens` corpus tokens in all, for `--epochs` epochs. The
held-out sequences are the same for both (the hash rule, `heldout`).

For each model it reports the parameters, steps, training seconds and tokens/s, and the
held-out loss and perplexity before and after training beside the unigram model's
perplexity on the same targets (from the vocabulary's counts).

The two perplexities are not the same task: the masked LM predicts 15% of the tokens from
context on both sides, the causal LM every token from the tokens before it only. Each is
compared with its own unigram figure; the causal LM's perplexity is the usual LM figure.

Usage: PYTHONPATH=src python bench/clm_vs_mlm.py [--config configs/sample.toml]
           [--workdir DIR] [--tokens 150000] [--epochs 1] [--threads 1] [--seed 1]
           [--set KEY=VALUE (a train.mlm / train.clm key, for both)] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from embedpipe.config import load_config
from embedpipe.train.buckets import bucket_files
from embedpipe.train.loop import train
from embedpipe.workdir import MANIFEST, Workdir

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "clm.json"
# configs/sample-mlm.toml's encoder, for both models; heldout larger for a steadier figure.
SHARED = {
    "layers": 2, "heads": 4, "width": 64, "ffn": 256, "max_len": 128, "max_tokens": 1024,
    "lr": 3e-3, "warmup_steps": 100, "heldout": 0.05,
}  # fmt: skip
TASKS = {
    "mlm": "15% of the ordinary tokens, masked, predicted from both sides of the sequence",
    "clm": "every ordinary token predicted from the tokens before it",
}


def subset_workdir(source: Workdir, out: Path, tokens: int) -> dict[str, Any]:
    """A workdir at `out` with the source's vocabulary and the first sequences of each
    bucket, the same share of each, about `tokens` corpus tokens in all."""
    manifest = source.require("buckets")
    total = sum(b["tokens"] for b in manifest["counts"]["buckets"])
    share = min(1.0, tokens / total)
    stats = []
    for bucket, files in bucket_files(source.table_path("buckets", manifest=manifest)).items():
        table = pa.concat_tables(pq.read_table(f) for f in files)
        table = table.slice(0, max(1, round(share * table.num_rows)))
        (out / "buckets" / f"bucket={bucket}").mkdir(parents=True)
        pq.write_table(table, out / "buckets" / f"bucket={bucket}" / "part-00000.parquet")
        count = int(pc.sum(pc.list_value_length(table.column("ids"))).as_py())
        stats.append({"bucket": bucket, "sequences": table.num_rows, "tokens": count})
    counts = {"boundaries": manifest["counts"]["boundaries"], "buckets": stats}
    fingerprint = f"{manifest['fingerprint']}-first-{share:.6f}"
    (out / "buckets" / MANIFEST).write_text(
        json.dumps({"fingerprint": fingerprint, "counts": counts})
    )
    vocab = source.require("vocab")
    (out / "vocab").mkdir()
    pq.write_table(pq.read_table(source.table_path("vocab")), out / "vocab" / "part-00000.parquet")
    (out / "vocab" / MANIFEST).write_text(json.dumps({"fingerprint": vocab["fingerprint"]}))
    return {
        "source_workdir": source.root,
        "buckets_fingerprint": manifest["fingerprint"],
        "share": round(share, 6),
        "sequences": sum(s["sequences"] for s in stats),
        "tokens": sum(s["tokens"] for s in stats),
        "vocab": vocab["counts"]["vocab_size"],
    }


def run(model: str, workdir: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train `model` on the subset; its figures from the run's summary."""
    settings = {**SHARED, **dict(kv.split("=", 1) for kv in args.set)}
    overrides = [
        f"train.model={model}", f"train.epochs={args.epochs}", f"train.threads={args.threads}",
        f"train.seed={args.seed}", "train.log_every=1000000",
        *(f"train.{model}.{k}={v}" for k, v in settings.items()),
    ]  # fmt: skip
    summary = train(load_config(None, overrides).train, str(workdir), out)
    first, last = summary["heldout"][0], summary["heldout"][-1]
    return {
        "task": TASKS[model],
        "parameters": summary["parameters"],
        "steps": summary["steps"],
        "train_seconds": summary["seconds"],
        "tokens_per_sec": summary["words_per_sec"],
        "heldout_targets": last["targets"],
        "initial_heldout_perplexity": first["perplexity"],
        "heldout_loss": last["loss"],
        "heldout_perplexity": last["perplexity"],
        "unigram_heldout_perplexity": last["unigram_perplexity"],
        "perplexity_over_unigram": round(last["perplexity"] / last["unigram_perplexity"], 4),
        "by_epoch": [
            {k: h[k] for k in ("epoch", "loss", "perplexity")} for h in summary["heldout"]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "sample.toml"))
    parser.add_argument("--workdir", help="a prepared workdir (default: the config's)")
    parser.add_argument("--tokens", type=int, default=150_000, help="corpus tokens to train on")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    source = Workdir(args.workdir or load_config(args.config, []).workdir)
    with tempfile.TemporaryDirectory() as tmp:
        data = subset_workdir(source, Path(tmp, "work"), args.tokens)
        models = {m: run(m, Path(tmp, "work"), Path(tmp, m), args) for m in ("clm", "mlm")}
    result = {
        "data": data,
        "settings": {**SHARED, **dict(kv.split("=", 1) for kv in args.set)},
        "epochs": args.epochs,
        "threads": args.threads,
        "seed": args.seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "torch": torch.__version__,
        "models": models,
        "note": "The perplexities are of different tasks (see each model's task): the masked "
        "LM's is not a language-model perplexity and is not comparable with the causal LM's; "
        "each is read against its own unigram figure on the same targets.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, figures in models.items():
        print(
            f"{name}: {figures['parameters']:,} parameters, {figures['steps']} steps, "
            f"{figures['tokens_per_sec']:,} tokens/s; held-out perplexity "
            f"{figures['initial_heldout_perplexity']} -> {figures['heldout_perplexity']} "
            f"(unigram {figures['unigram_heldout_perplexity']}, "
            f"ratio {figures['perplexity_over_unigram']})"
        )


if __name__ == "__main__":
    main()
