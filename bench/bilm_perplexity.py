"""The biLM against the unigram model and the masked LM: held-out perplexity.

Both models train through the trainer itself (`loop.train`, in-process, one rank) on the
same sequences (`clm_vs_mlm.subset_workdir`: the first sequences of every bucket of a
prepared workdir, `--tokens` corpus tokens in all) for `--epochs` epochs, with the same
token budget, AdamW, schedule, held-out share and seed, at about the same parameter count:
the masked LM is `clm_vs_mlm.SHARED`'s encoder (width 64), the biLM has 64-wide token
embeddings and 2 layers of 64-cell LSTMs per direction (the tied embedding matrix is most
of both models' parameters).

For each model it reports the parameters, steps, training seconds and tokens/s, and the
held-out loss and perplexity before and after training beside the unigram model's
perplexity on the same targets (from the vocabulary's counts).

The tasks differ: the biLM's perplexity is exp of the mean of its forward (next-token) and
backward (previous-token) losses over every ordinary token, a language-model perplexity;
the masked LM predicts 15% of the tokens, masked, from both sides at once, which is easier
and not a language-model perplexity. Each is read against its own unigram figure.

Usage: PYTHONPATH=src python bench/bilm_perplexity.py [--config configs/sample.toml]
           [--workdir DIR] [--tokens 60000] [--epochs 1] [--threads 1] [--seed 1]
           [--models bilm,mlm] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from embedpipe.config import load_config
from embedpipe.train.loop import train
from embedpipe.workdir import Workdir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clm_vs_mlm import SHARED, subset_workdir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "bilm.json"
# A short run: a small token budget and warm-up so that ~100 steps train; the biLM's peak
# lr is the usual one for LSTMs under Adam, the masked LM's its sample config's.
BUDGET = {"max_len": 128, "max_tokens": 512, "warmup_steps": 20, "heldout": 0.05}
SETTINGS = {
    "bilm": {"dim": 64, "hidden": 64, "layers": 2, "lr": 1e-2, **BUDGET},
    "mlm": {**SHARED, **BUDGET},
}
TASKS = {
    "bilm": "every ordinary token predicted from the tokens before it (forward) and, "
    "separately, from the tokens after it (backward); exp of the mean of both losses",
    "mlm": "15% of the ordinary tokens, masked, predicted from both sides of the sequence",
}


def run(model: str, workdir: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train `model` on the subset; its figures from the run's summary."""
    overrides = [
        f"train.model={model}", f"train.epochs={args.epochs}", f"train.threads={args.threads}",
        f"train.seed={args.seed}", "train.log_every=1000000",
        *(f"train.{model}.{k}={v}" for k, v in SETTINGS[model].items()),
    ]  # fmt: skip
    summary = train(load_config(None, overrides).train, str(workdir), out)
    first, last = summary["heldout"][0], summary["heldout"][-1]
    return {
        "task": TASKS[model],
        "settings": SETTINGS[model],
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "sample.toml"))
    parser.add_argument("--workdir", help="a prepared workdir (default: the config's)")
    parser.add_argument("--tokens", type=int, default=60_000, help="corpus tokens to train on")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--models", default="bilm,mlm")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    source = Workdir(args.workdir or load_config(args.config, []).workdir)
    with tempfile.TemporaryDirectory() as tmp:
        data = subset_workdir(source, Path(tmp, "work"), args.tokens)
        models = {m: run(m, Path(tmp, "work"), Path(tmp, m), args) for m in args.models.split(",")}
    result = {
        "data": data,
        "epochs": args.epochs,
        "threads": args.threads,
        "seed": args.seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "torch": torch.__version__,
        "models": models,
        "note": "The perplexities are of different tasks (see each model's task): the biLM's "
        "is a language-model perplexity (both directions), the masked LM's is not and is not "
        "comparable with it; each is read against its own unigram figure on the same targets.",
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
