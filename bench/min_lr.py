"""How word2vec's default `min_lr` was chosen: the scores at each candidate final learning rate.

For skip-gram and CBOW on each prepared corpus (the head-to-head's work dirs, so the same
tokens and settings as `train_vs_gensim.py`), it trains `--seeds` seeds at each candidate
`min_lr` (everything else at its default) and prints the mean scores beside gensim's means
from that corpus's head-to-head results file, which ran on the same tokens. Training speed
does not depend on the learning rate, so only scores are compared.

Usage: python bench/min_lr.py [--corpus WORKDIR=RESULTS ...] [--models sgns cbow] [--seeds 3]
Results: bench/results/min_lr.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_vs_gensim as w2v  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "min_lr.json"
CANDIDATES = (0.0001, 0.0025)  # word2vec.c's final rate; about gensim corpus_file's at 2 workers
CORPORA = (
    f"/work/bench-data/train-work={w2v.RESULTS}",
    f"/work/bench-data/train-short={w2v.RESULTS.with_name('train_vs_gensim-short.json')}",
)


def gensim_means(results: Path, model: str) -> dict[str, float]:
    """gensim's mean scores in a head-to-head results file."""
    row = json.loads(results.read_text())["models"][model]["gensim"]
    return {key: row[key] for key in w2v.SCORES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="+", default=list(CORPORA), metavar="WORKDIR=RESULTS")
    parser.add_argument("--models", nargs="+", default=["sgns", "cbow"])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    out: dict[str, Any] = {"candidates": CANDIDATES, "seeds": args.seeds, "corpora": {}}
    for item in args.corpus:
        workdir, results = (Path(p) for p in item.split("="))
        out["corpora"][str(workdir)] = rows = {}
        for model in args.models:
            gensim = gensim_means(results, model)
            rows[model] = {"gensim": gensim}
            print(f"\n{workdir.name} {model}: {'WS353':>7s} {'SimLex':>7s} {'analogy':>8s}")
            print(f"  gensim (means){'':9s}" + " ".join(f"{gensim[k]:>7.4f}" for k in w2v.SCORES))
            for min_lr in CANDIDATES:
                runs = [
                    w2v.run_embedpipe(workdir, model, 5, 1, [
                        f"train.{model}.min_lr={min_lr}", f"train.seed={seed}", "train.threads=2"
                    ])
                    for seed in range(1, args.seeds + 1)
                ]  # fmt: skip
                mean = w2v.mean_of(runs)
                rows[model][str(min_lr)] = mean
                diff = {k: round(mean[k] - gensim[k], 4) for k in w2v.SCORES}
                mean["minus_gensim"] = diff
                print(f"  min_lr {min_lr:<16g}" + " ".join(f"{mean[k]:>7.4f}" for k in w2v.SCORES)
                      + "   minus gensim " + " ".join(f"{diff[k]:+.4f}" for k in w2v.SCORES),
                      flush=True)  # fmt: skip
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
