"""embedpipe's subword skip-gram (`fasttext`) against Facebook's fastText, side by side.

Both sides train on exactly the same token sequences: embedpipe's corpus stages tokenise
the corpus (Spark, as bench/train_vs_gensim.py), and fastText reads those tokens from a
space-separated copy. Settings are the same on both sides: skip-gram with negative
sampling, dim 100, window 5, 5 negatives, min_count 5, sample 1e-3, lr 0.05, n-grams of
3..6 characters hashed into `--bucket` rows, `--epochs`, `--threads` threads (one
embedpipe process with as many Hogwild kernel threads). Both draw K negatives per
context word from counts^0.5 (`train.fasttext.noise_power`'s default). Known difference:
fastText writes the input rows after every context word, embedpipe once per window, with
the same running mean in between (see `train.subwords`).

words/s is raw corpus words x epochs / training seconds on both sides (fastText's
training seconds: its run less a 0-epoch run, which reads the file and builds the
dictionary). Scores: WordSim-353, SimLex-999 and Google analogies on each side's
vocabulary vectors (fastText's `get_word_vector`, embedpipe's published vectors).

The OOV test holds out `--heldout` words of WordSim-353 and SimLex-999 (seeded, among
the vocabulary's words seen 20 to 2000 times): every corpus line holding one is removed,
both sides train again on what is left, and the benchmark pairs with a held-out word are
scored with its vector composed of n-grams (embedpipe: `load`'s `SubwordEmbeddings`
rule) against the all-OOV baseline: every held-out word given one vector, the mean of
the vocabulary's vectors (`Embeddings.align(unknown="mean")`), which is what a model
without subwords can do. It also checks that fastText's n-gram ids of the held-out words
equal embedpipe's hashing, and records how many of the vocabulary's n-grams share a
bucket at several bucket sizes (the reason for `train.fasttext.bucket`'s default).

Usage: python bench/fasttext_vs.py --corpus /work/bench-data/corpus-10m.txt \
           [--workdir /work/bench-data/train-work] [--ft-python /tmp/ftvenv/bin/python] \
           [--epochs 5] [--threads 2] [--bucket 500000] [--heldout 80] [--no-oov]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_vs_gensim import prepare, scores, write_tokens_text  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "fasttext.json"
REFERENCE = Path(__file__).resolve().parent / "fasttext_reference.py"
SETTINGS = {"dim": 100, "window": 5, "negatives": 5, "min_count": 5, "sample": 1e-3,
            "lr": 0.05, "minn": 3, "maxn": 6}  # fmt: skip
SCORES = ("wordsim353", "simlex999", "analogy")


def vocabulary(workdir: Path) -> tuple[list[str], np.ndarray]:
    """The workdir's tokens by id and their counts."""
    import pyarrow.parquet as pq

    from embedpipe.workdir import Workdir

    table = pq.read_table(Workdir(str(workdir)).table_path("vocab")).sort_by("id")
    return table.column("token").to_pylist(), table.column("count").to_numpy()


def run_reference(
    python: str, tokens_file: Path, settings: dict[str, Any], run: dict[str, Any], extra: list[str]
) -> dict[str, Any]:
    """fastText in its venv (bench/fasttext_reference.py); its vectors and seconds."""
    out = tokens_file.parent / "fasttext-reference.npz"
    job = {
        "tokens": str(tokens_file),
        "settings": settings,
        "out": str(out),
        "extra_words": extra,
        "epochs": run["epochs"],
        "threads": run["threads"],
    }  # fmt: skip (no seed in 0.9.2)
    job_file = tokens_file.parent / "fasttext-reference.json"
    job_file.write_text(json.dumps(job))
    done = subprocess.run([python, str(REFERENCE), str(job_file)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    data = np.load(out)
    return {
        "seconds": round(float(data["seconds"]), 2),
        "setup_seconds": round(float(data["setup_seconds"]), 2),
        "words": data["words"].tolist(),
        "vectors": data["vectors"],
        "extra": dict(zip(data["extra_words"].tolist(), data["extra_vectors"], strict=True)),
        "buckets": dict(zip(extra, json.loads(str(data["extra_buckets"])), strict=True)),
    }


def run_ours(workdir: Path, settings: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """embedpipe's fasttext in one process with `threads` kernel threads; its summary,
    vocabulary vectors and the loaded-artefact view that composes unseen words."""
    from safetensors.numpy import load_file

    from embedpipe.artefacts.subwords import SubwordEmbeddings

    out = workdir / "train-fasttext"
    keys = ("dim", "window", "negatives", "lr", "minn", "maxn", "bucket")
    command = [
        sys.executable, "-m", "embedpipe.train", "--out", str(out), "--set", f"workdir={workdir}",
        "--set", "train.model=fasttext", "--set", f"train.epochs={run['epochs']}",
        "--set", f"train.threads={run['threads']}", "--set", f"train.seed={run['seed']}",
        "--set", "train.nproc=1", "--set", "train.log_every=1000000",
        *(a for k in keys for a in ("--set", f"train.fasttext.{k}={settings[k]}")),
    ]  # fmt: skip
    subprocess.run(["rm", "-rf", str(out)], check=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    summary = json.loads((out / "_TRAINED.json").read_text())
    tensors = load_file(str(out / "checkpoints" / summary["checkpoint"] / "model.safetensors"))
    tokens, counts = vocabulary(workdir)
    vectors = tensors["vectors"]
    ngrams = tensors["input"][len(tokens) :]
    emb = SubwordEmbeddings(
        vectors, tokens, counts, ngrams=ngrams, minn=settings["minn"], maxn=settings["maxn"]
    )
    return {"seconds": summary["seconds"], "emb": emb}


def benchmark_pairs() -> list[tuple[str, str, float, str]]:
    """WordSim-353 and SimLex-999 pairs, lower-cased: (word, word, score, benchmark)."""
    from embedpipe.evaluate import BENCHMARKS
    from embedpipe.evaluate.similarity import read_pairs

    return [
        (a.lower(), b.lower(), score, bench.name)
        for bench in BENCHMARKS
        if bench.kind == "similarity"
        for a, b, score in read_pairs(bench.data)
    ]


def choose_heldout(workdir: Path, n: int, seed: int) -> list[str]:
    """`n` benchmark words of the vocabulary seen 20 to 2000 times (seeded): removing their
    lines keeps most of the corpus."""
    tokens, counts = vocabulary(workdir)
    count = dict(zip(tokens, counts.tolist(), strict=True))
    words = sorted({w for a, b, _, _ in benchmark_pairs() for w in (a, b)})
    eligible = [w for w in words if 20 <= count.get(w, 0) <= 2000]
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(eligible, size=min(n, len(eligible)), replace=False).tolist())


def write_heldout_corpus(corpus: Path, words: list[str], out: Path) -> dict[str, int]:
    """`corpus` less every line where one of `words` stands as a whole word (after NFKC and
    lower-casing, letters and digits around it ending it, a superset of the tokenizer's)."""
    pattern = re.compile(r"(?<![^\W_])(?:" + "|".join(map(re.escape, words)) + r")(?![^\W_])")
    kept = removed = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with corpus.open(encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        for line in src:
            if pattern.search(unicodedata.normalize("NFKC", line).lower()):
                removed += 1
            else:
                kept += 1
                dst.write(line)
    return {"lines_kept": kept, "lines_removed": removed}


def oov_scores(vector: Any, known: set[str], heldout: set[str], mean: np.ndarray) -> dict[str, Any]:
    """Spearman on the benchmark pairs with a held-out word (the other one held out or
    known), held-out words composed by `vector(word)`, against the all-OOV baseline (every
    held-out word `mean`); per benchmark and over both."""
    from embedpipe.evaluate.similarity import spearman

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))

    pairs = [
        p for p in benchmark_pairs() if {p[0], p[1]} & heldout and {p[0], p[1]} <= known | heldout
    ]
    result: dict[str, Any] = {}
    for name in ("wordsim353", "simlex999", "both"):
        chosen = [p for p in pairs if name in ("both", p[3])]
        human = np.array([p[2] for p in chosen])
        composed = [cosine(vector(a), vector(b)) for a, b, _, _ in chosen]
        base = [
            cosine(mean if a in heldout else vector(a), mean if b in heldout else vector(b))
            for a, b, _, _ in chosen
        ]
        result[name] = {
            "pairs": len(chosen),
            "subwords": round(spearman(human, np.array(composed)), 4),
            "all_oov_baseline": round(spearman(human, np.array(base)), 4),
        }
    return result


def bucket_sharing(tokens: list[str], sizes: list[int]) -> dict[str, Any]:
    """Distinct n-grams of the vocabulary's words and, per bucket size, the share of them
    that share their row with another n-gram (their full 32-bit hashes, reduced)."""
    from embedpipe.schemas import SPECIAL_TOKENS
    from embedpipe.train.subwords import SubwordIndex

    index = SubwordIndex.build(tokens, SETTINGS["minn"], SETTINGS["maxn"], 2**32)
    hashes = np.unique(index.rows[index.rows >= len(tokens)] - len(tokens))
    shared = {}
    for size in sizes:
        _, rows, per_row = np.unique(hashes % size, return_inverse=True, return_counts=True)
        shared[str(size)] = round(float((per_row[rows] > 1).mean()), 4)
    words = len(tokens) - len(SPECIAL_TOKENS)
    return {"words": words, "distinct_ngrams": len(hashes), "share_sharing_a_row": shared}


def side(seconds: float, words: int, epochs: int, vectors: Any, vocab: list[str]) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "words_per_sec": round(words * epochs / seconds),
        **scores(np.asarray(vectors), vocab),
    }


def compare(
    args: argparse.Namespace, corpus: Path, workdir: Path, heldout: list[str]
) -> dict[str, Any]:
    """Both sides on one corpus: rates, scores and (with `heldout` words) the OOV test."""
    from embedpipe.schemas import SPECIAL_TOKENS
    from embedpipe.text.subwords import word_ngrams

    manifests = prepare(corpus, workdir)
    words = manifests["tokenize"]["counts"]["tokens"]
    tokens_file = write_tokens_text(workdir)
    settings = {**SETTINGS, "bucket": args.bucket}
    run = {"epochs": args.epochs, "threads": args.threads, "seed": args.seed}
    ref = run_reference(args.ft_python, tokens_file, settings, run, heldout)
    ours = run_ours(workdir, settings, run)
    emb, seconds = ours["emb"], ours["seconds"]
    row: dict[str, Any] = {
        "corpus_tokens": words,
        "vocabulary": len(emb) - len(SPECIAL_TOKENS),
        "fasttext": side(ref["seconds"], words, args.epochs, ref["vectors"], ref["words"]),
        "embedpipe": side(seconds, words, args.epochs, emb.vectors, emb.vocab),
    }
    row["fasttext"]["setup_seconds"] = ref["setup_seconds"]
    row["speed_ratio"] = round(
        row["embedpipe"]["words_per_sec"] / row["fasttext"]["words_per_sec"], 3
    )
    row["score_difference"] = {
        k: round(row["embedpipe"][k] - row["fasttext"][k], 4) for k in SCORES
    }
    if not heldout:
        return row
    seen = sorted(w for w in heldout if w in emb or w in ref["words"])
    unseen = set(heldout) - set(seen)
    position = {w: i for i, w in enumerate(ref["words"])}
    known = (set(emb.vocab) - set(SPECIAL_TOKENS)) & set(ref["words"])

    def theirs(word: str) -> np.ndarray:
        return ref["extra"][word] if word in unseen else ref["vectors"][position[word]]

    mine_mean = emb.vectors[len(SPECIAL_TOKENS) :].mean(axis=0)
    row["oov"] = {
        "heldout_words": sorted(unseen),
        "still_in_vocabulary": seen,
        "hash_parity": all(
            ref["buckets"][w]
            == word_ngrams(w, SETTINGS["minn"], SETTINGS["maxn"], args.bucket).tolist()
            for w in unseen
        ),
        "fasttext": oov_scores(theirs, known, unseen, ref["vectors"].mean(axis=0)),
        "embedpipe": oov_scores(emb.__getitem__, known, unseen, mine_mean),
    }
    return row


def report(name: str, row: dict[str, Any], threads: int) -> None:
    print(f"\n{name}: {row['corpus_tokens']:,} tokens, vocabulary {row['vocabulary']:,}")
    print(f"  {'':28s}{'words/s':>10s} {'WS353':>7s} {'SimLex':>7s} {'analogy':>8s}")
    for label, key in (
        (f"fastText {threads} threads", "fasttext"),
        (f"embedpipe 1 x {threads} threads", "embedpipe"),
    ):
        r = row[key]
        print(
            f"  {label:28s}{r['words_per_sec']:>10,} {r['wordsim353']:>7.3f} {r['simlex999']:>7.3f} {r['analogy']:>8.3f}"
        )
    diff = row["score_difference"]
    print(f"  speed ratio embedpipe/fastText: {row['speed_ratio']:.2f}x (target >= 2)")
    print(
        f"  score difference: WS353 {diff['wordsim353']:+.4f}, SimLex {diff['simlex999']:+.4f} (target within 0.01)"
    )
    if "oov" in row:
        oov = row["oov"]
        print(
            f"  OOV test: {len(oov['heldout_words'])} held-out words, hashing equal to fastText's: {oov['hash_parity']}"
        )
        for key in ("fasttext", "embedpipe"):
            for bench, r in oov[key].items():
                print(
                    f"    {key:10s} {bench:11s} {r['pairs']:4d} pairs: subwords {r['subwords']:+.3f}, "
                    f"all-OOV baseline {r['all_oov_baseline']:+.3f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("/work/bench-data/train-work"))
    parser.add_argument(
        "--ft-python", default="/tmp/ftvenv/bin/python", help="a Python with fasttext"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bucket", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--heldout", type=int, default=80, help="benchmark words held out")
    parser.add_argument("--no-oov", action="store_true", help="skip the OOV test")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    results: dict[str, Any] = {"settings": {**SETTINGS, "bucket": args.bucket}, "epochs": args.epochs,
                               "threads": args.threads, "cpus": os.cpu_count(), "seed": args.seed}  # fmt: skip
    results["same_corpus"] = compare(args, args.corpus, args.workdir, [])
    report("same corpus", results["same_corpus"], args.threads)
    tokens, _ = vocabulary(args.workdir)
    results["bucket_sharing"] = bucket_sharing(
        tokens, [100_000, 200_000, 500_000, 1_000_000, 2_000_000]
    )
    if not args.no_oov:
        heldout = choose_heldout(args.workdir, args.heldout, args.seed)
        oov_dir = args.workdir.with_name(args.workdir.name + "-fasttext-oov")
        corpus = oov_dir / "corpus.txt"
        results["heldout_corpus"] = write_heldout_corpus(args.corpus, heldout, corpus)
        results["heldout_corpus"]["workdir"] = str(oov_dir)
        results["oov_corpus"] = compare(args, corpus, oov_dir, heldout)
        report("held-out corpus", results["oov_corpus"], args.threads)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
