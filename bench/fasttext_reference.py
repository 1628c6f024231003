"""The reference side of bench/fasttext_vs.py: Facebook's fastText, in its own venv.

Run by fasttext_vs.py as `<venv>/bin/python bench/fasttext_reference.py JOB.json` with a
Python that has the `fasttext` package (`python3 -m venv /tmp/ftvenv &&
/tmp/ftvenv/bin/pip install fasttext-wheel numpy`); imports nothing of embedpipe. The job
names the tokens file, the settings and the words to look up; it trains skip-gram twice,
once with 0 epochs (reading the file, building the dictionary and the n-gram index,
allocating the tables: what is not training) and once with the job's epochs, and writes
an .npz: training seconds (the second call less the first), the vocabulary and its word
vectors (`get_word_vector`: the mean of word and n-gram rows, as fastText's .vec), the
vectors of the extra words (unseen ones are composed of their n-grams) and, for those,
`get_subwords` ids less nwords (the n-gram buckets, to check the hashing against ours).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import fasttext
import numpy as np


def train(job: dict[str, Any], epochs: int) -> tuple[Any, float]:
    s = job["settings"]
    start = time.perf_counter()
    model = fasttext.train_unsupervised(
        job["tokens"], model="skipgram", dim=s["dim"], ws=s["window"], neg=s["negatives"],
        minCount=s["min_count"], t=s["sample"], minn=s["minn"], maxn=s["maxn"],
        bucket=s["bucket"], lr=s["lr"], epoch=epochs, thread=job["threads"],
        verbose=0,
    )  # fmt: skip
    return model, time.perf_counter() - start


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    _, setup = train(job, 0)
    model, total = train(job, job["epochs"])
    words = list(model.words)
    nwords = len(words)
    extra = job["extra_words"]
    buckets = [[int(i) - nwords for i in model.get_subwords(w)[1] if i >= nwords] for w in extra]
    np.savez(
        job["out"],
        seconds=total - setup,
        setup_seconds=setup,
        words=np.array(words),
        vectors=np.stack([model.get_word_vector(w) for w in words]),
        extra_words=np.array(extra),
        extra_vectors=np.array([model.get_word_vector(w) for w in extra]).reshape(
            len(extra), model.get_dimension()
        ),
        extra_buckets=np.array(json.dumps(buckets)),
    )


if __name__ == "__main__":
    main()
