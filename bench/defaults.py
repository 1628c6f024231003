"""How each model's default `batch_size` was chosen: a sweep on one corpus, one run each.

For each model it trains with the candidate batch sizes (everything else at its default,
except the settings the head-to-head benches share with the reference tools: GloVe's
x_max 10 and eta 0.05 as Stanford's demo.sh, word2vec's window 5 and negatives 5) and prints the rate, the three scores and the rate against
the current default's run, side by side (runs go through the head-to-head benches' own
`run_embedpipe`, so their settings are those benches'). The default is the fastest size whose scores stay
within 0.01 of the best run's. Results: bench/results/defaults.json.

Usage: python bench/defaults.py --corpus /work/bench-data/corpus-10m.txt \
           [--workdir /work/bench-data/train-work] [--models glove sgns cbow] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import glove_vs_stanford as glove  # noqa: E402
import train_vs_gensim as w2v  # noqa: E402

from embedpipe.train.registry import get_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "defaults.json"
CANDIDATES = {
    "glove": [16_384, 262_144, 1_048_576, 4_194_304],
    "sgns": [4_096, 16_384, 65_536],
    "cbow": [4_096, 16_384, 65_536],
}
EPOCHS = {"glove": 5, "sgns": 1, "cbow": 1}  # short runs: the sweep compares, it does not tune
SCORES = ("wordsim353", "simlex999", "analogy")


def sweep(workdir: Path, model: str, epochs: int) -> list[dict[str, Any]]:
    """One run per candidate batch size (seed 1), in the order of the candidates."""
    runs = []
    for size in CANDIDATES[model]:
        if model == "glove":
            run = glove.run_embedpipe(workdir, 1, 2, size, seed=1, iterations=epochs)
            run["words_per_sec"] = run.pop("entries_per_sec")
        else:
            extra = [f"train.{model}.batch_size={size}", "train.seed=1", "train.threads=2"]
            run = w2v.run_embedpipe(workdir, model, epochs, 1, extra)
        runs.append({**run, "batch_size": size})
        print(f"  {model} batch {size:>9,d}: {run['words_per_sec']:>11,.0f}/s  "
              + "  ".join(f"{k} {run[k]:.4f}" for k in SCORES), flush=True)  # fmt: skip
    return runs


def choose(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run whose every score is within 0.01 of the best run's."""
    best = {k: max(r[k] for r in runs) for k in SCORES}
    fair = [r for r in runs if all(best[k] - r[k] <= 0.01 for k in SCORES)]
    return max(fair, key=lambda r: r["words_per_sec"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("/work/bench-data/train-work"))
    parser.add_argument("--models", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--epochs", type=int, help="default: glove 5, sgns and cbow 1")
    args = parser.parse_args()

    w2v.prepare(args.corpus, args.workdir, ("tokenize", "build_vocab", "encode", "cooccur"))
    results: dict[str, Any] = {"corpus": str(args.corpus), "epochs": args.epochs or EPOCHS,
                               "cpus": os.cpu_count(), "models": {}}  # fmt: skip
    for model in args.models:
        section = get_model(model).section()
        default = section.batch_for("cpu") if model == "glove" else section.batch_size
        runs = sweep(args.workdir, model, args.epochs or EPOCHS[model])
        chosen = choose(runs)
        at_default = next((r for r in runs if r["batch_size"] == default), None)
        results["models"][model] = {"default": default, "chosen": chosen["batch_size"],
                                    "runs": runs}  # fmt: skip
        print(f"{model}: default {default:,d}, fastest within 0.01 of the best scores: "
              f"{chosen['batch_size']:,d}"
              + (f" ({chosen['words_per_sec'] / at_default['words_per_sec']:.2f}x the default)"
                 if at_default else ""))  # fmt: skip
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
