"""embedpipe's trainer against gensim 4.x, side by side on the same tokens and cores.

Both sides train on exactly the same token sequences: embedpipe's corpus stages tokenise
the corpus (Spark), and gensim reads those tokens from a space-separated copy in its
fastest mode (`corpus_file`, one worker thread per core). Settings are identical:
skip-gram or CBOW, negative 5, window 5, dim 100, min_count 5, sample 1e-3, epochs 5.

words/s is counted as gensim counts them: raw corpus words x epochs / training seconds.
It prints both rates, their ratio, and WordSim-353, SimLex-999 and Google-analogy scores
for both, and writes the figures to bench/results/train_vs_gensim.json.

Usage: python bench/train_vs_gensim.py --corpus /work/bench-data/corpus-10m.txt \
           [--workdir /work/bench-data/train-work] [--models sgns cbow] [--epochs 5] [--nproc 2] \
           [--threads 2] [--scaling] [--set train.batch_size=N]

`--threads 2` adds a run of one process with two Hogwild kernel threads, `--scaling` one of
a single process and thread; bytes exchanged per step come from the trainer's summary.
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

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "train_vs_gensim.json"
SETTINGS = {
    "dim": 100,
    "window": 5,
    "negatives": 5,
    "min_count": 5,
    "sample": 1e-3,
}  # sample: vocab.sample


def prepare(
    corpus: Path, workdir: Path, stages: tuple[str, ...] = ("tokenize", "build_vocab", "encode")
) -> dict[str, Any]:
    """Run (or reuse) embedpipe's corpus stages; returns the stage manifests."""
    from embedpipe.config import load_config
    from embedpipe.corpus.session import get_spark
    from embedpipe.corpus.stages import STAGE_FUNCTIONS

    config = load_config(
        None,
        [f"workdir={workdir}", f'corpus.paths=["{corpus}"]', f"vocab.min_count={SETTINGS['min_count']}",
         f"vocab.sample={SETTINGS['sample']}", "spark.driver_memory=4g",
         # gensim, word2vec.c and the GloVe tools skip words outside the vocabulary
         # (they take no window position): so does embedpipe here.
         "encode.oov=drop"],
    )  # fmt: skip
    spark = get_spark(config.spark)
    manifests = {s: STAGE_FUNCTIONS[s](spark, config) for s in stages}
    spark.stop()
    return manifests


def write_tokens_text(workdir: Path) -> Path:
    """The tokens table as one space-separated line per sequence (gensim's corpus_file)."""
    out = workdir / "tokens.txt"
    if out.exists():
        return out
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for batch in pq.ParquetDataset(workdir / "tokens").read(columns=["tokens"]).to_batches():
            for tokens in batch.column(0).to_pylist():
                if tokens:
                    f.write(" ".join(tokens) + "\n")
    tmp.rename(out)
    return out


def scores(vectors: Any, vocab: list[str]) -> dict[str, float]:
    from embedpipe.evaluate import evaluate_all

    r = evaluate_all(vectors, vocab)
    return {
        "wordsim353": round(r["wordsim353"]["spearman"], 4),
        "simlex999": round(r["simlex999"]["spearman"], 4),
        "analogy": round(r["analogy"]["accuracy"], 4),
        "analogy_coverage": round(r["analogy"]["coverage"], 4),
    }


def run_gensim(
    tokens_file: Path, words: int, model: str, epochs: int, workers: int
) -> dict[str, Any]:
    from gensim.models import Word2Vec

    w2v = Word2Vec(
        vector_size=SETTINGS["dim"], window=SETTINGS["window"], negative=SETTINGS["negatives"],
        min_count=SETTINGS["min_count"], sample=SETTINGS["sample"], sg=int(model == "sgns"),
        workers=workers, seed=1,
    )  # fmt: skip
    w2v.build_vocab(corpus_file=str(tokens_file))
    start = time.perf_counter()
    w2v.train(
        corpus_file=str(tokens_file), epochs=epochs, total_examples=w2v.corpus_count,
        total_words=w2v.corpus_total_words,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "words_per_sec": round(words * epochs / seconds),
        **scores(w2v.wv.vectors, list(w2v.wv.index_to_key)),
    }


def run_embedpipe(
    workdir: Path, model: str, epochs: int, nproc: int, extra: list[str] = ()
) -> dict[str, Any]:
    from safetensors.numpy import load_file

    out = workdir / f"train-{model}-{nproc}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "embedpipe.train", "--out", str(out), "--set", f"workdir={workdir}",
        "--set", f"train.model={model}", "--set", f"train.epochs={epochs}",
        "--set", f"train.dim={SETTINGS['dim']}", "--set", f"train.window={SETTINGS['window']}",
        "--set", f"train.negatives={SETTINGS['negatives']}", "--set", "train.log_every=1000000",
        *(arg for item in extra for arg in ("--set", item)),
    ]  # fmt: skip
    subprocess.run(["rm", "-rf", str(out)], check=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    summary = json.loads((out / "_TRAINED.json").read_text())
    weights = load_file(str(out / "checkpoints" / summary["checkpoint"] / "model.safetensors"))
    vocab = pq.read_table(workdir / "vocab").sort_by("id").column("token").to_pylist()
    return {
        "seconds": summary["seconds"],
        "words_per_sec": summary["words_per_sec"],
        "bytes_per_step": summary.get("bytes_per_step"),
        "steps": summary["steps"],
        **scores(weights["input"], vocab),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("/work/bench-data/train-work"))
    parser.add_argument("--models", nargs="+", default=["sgns"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--scaling", action="store_true", help="also time 1 process")
    parser.add_argument(
        "--threads", type=int, default=0, help="also run 1 process with this many kernel threads"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra embedpipe settings"
    )
    args = parser.parse_args()

    manifests = prepare(args.corpus, args.workdir)
    words = manifests["tokenize"]["counts"]["tokens"]
    tokens_file = write_tokens_text(args.workdir)
    print(f"corpus: {words:,} tokens, vocabulary {manifests['build_vocab']['counts']['words']:,}")
    results: dict[str, Any] = {"corpus_tokens": words, "settings": SETTINGS, "epochs": args.epochs,
                               "cpus": os.cpu_count(), "models": {}}  # fmt: skip
    for model in args.models:
        gensim = run_gensim(tokens_file, words, model, args.epochs, workers=args.nproc)
        ours = run_embedpipe(args.workdir, model, args.epochs, args.nproc, args.set)
        row = {"gensim": gensim, "embedpipe": ours,
               "speed_ratio": round(ours["words_per_sec"] / gensim["words_per_sec"], 3)}  # fmt: skip
        if args.threads > 1:
            threads = [*args.set, f"train.threads={args.threads}"]
            row["embedpipe_threads"] = run_embedpipe(args.workdir, model, args.epochs, 1, threads)
            row["threads_speed_ratio"] = round(
                row["embedpipe_threads"]["words_per_sec"] / gensim["words_per_sec"], 3
            )
        if args.scaling:
            row["embedpipe_1proc"] = run_embedpipe(args.workdir, model, args.epochs, 1, args.set)
        results["models"][model] = row
        print(f"\n{model}: {'':10s}{'words/s':>10s} {'WS353':>7s} {'SimLex':>7s} {'analogy':>8s}")
        for name, r in (
            ("gensim", gensim),
            ("embedpipe", ours),
            *(
                [(f"1 proc x {args.threads} thr", row["embedpipe_threads"])]
                if args.threads > 1
                else []
            ),
            *([("1 process", row["embedpipe_1proc"])] if args.scaling else []),
        ):
            print(f"  {name:14s}{r['words_per_sec']:>10,} {r['wordsim353']:>7.3f} "
                  f"{r['simlex999']:>7.3f} {r['analogy']:>8.3f}")  # fmt: skip
        print(f"  speed ratio embedpipe/gensim: {row['speed_ratio']:.2f}x ({args.nproc} processes)")
        if args.threads > 1:
            print(f"  speed ratio embedpipe/gensim: {row['threads_speed_ratio']:.2f}x "
                  f"(1 process x {args.threads} threads)")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
