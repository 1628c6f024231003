"""Build the WordNet supersense classification set shipped in examples/data/.

Each example is one synset's gloss (definition and usage examples, never its lemmas),
labelled with the synset's lexicographer file ("supersense"): noun.animal, verb.motion, ...
Only synsets at odd positions of `bench/wordnet_text.py`'s `iter_synset_lines` order are
used: the bundled pretraining sample (data/sample/wordnet-glosses.txt.gz) holds the even
ones, so the classifier never sees a gloss the embeddings were trained on. A gloss that is
word-for-word the gloss of a sample synset is dropped as well.

Reads /usr/share/wordnet/data.{noun,verb,adj,adv} (Debian package wordnet-base).
WordNet 3.0 Copyright 2006 by Princeton University (licence in data/sample/LICENSE-WordNet).

    python examples/build_supersense.py examples/data/supersense.tsv
"""

from __future__ import annotations

import argparse
import gzip
import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

WORDNET_DIR = Path("/usr/share/wordnet")
PARTS = ("noun", "verb", "adj", "adv")  # the order of bench/wordnet_text.py
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "wordnet-glosses.txt.gz"

# Lexicographer file names by number, from lexnames(5WN) (WordNet 3.0).
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance",
    "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion",
    "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)  # fmt: skip

# Eight well-populated, clearly distinct supersenses (>= 700 odd-position synsets each).
CLASSES: tuple[str, ...] = (
    "noun.animal", "noun.artifact", "noun.food", "noun.location",
    "noun.person", "noun.plant", "verb.communication", "verb.motion",
)  # fmt: skip
COLUMNS = ("split", "label", "index", "synset", "gloss")


class Synset(NamedTuple):
    index: int  # position in iter_synset_lines order
    synset: str  # "<offset>-<pos>", the WordNet id
    lexname: str
    lemmas: list[str]
    gloss: str


def iter_synsets(wordnet_dir: Path = WORDNET_DIR) -> Iterator[Synset]:
    """Every synset in `bench/wordnet_text.py` order, with its lexicographer file name."""
    index = 0
    for part in PARTS:
        with open(wordnet_dir / f"data.{part}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue  # licence header
                head, gloss = line.rstrip().split(" | ", 1)
                fields = head.split()
                n_words = int(fields[3], 16)
                lemmas = [fields[4 + 2 * i].split("(")[0].replace("_", " ") for i in range(n_words)]
                synset = f"{fields[0]}-{fields[2]}"
                yield Synset(index, synset, LEXNAMES[int(fields[1])], lemmas, gloss.strip())
                index += 1


def sample_glosses(path: Path = SAMPLE) -> set[str]:
    """The glosses of the pretraining sample's lines ("lemmas: gloss")."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return {line.rstrip("\n").split(": ", 1)[-1] for line in f}


def build(
    per_class: int = 500, test_share: float = 0.2, seed: int = 0, wordnet_dir: Path = WORDNET_DIR
) -> list[dict[str, str]]:
    """`per_class` held-out synsets of each class, split into train and test per class."""
    seen = sample_glosses()
    pools: dict[str, list[Synset]] = defaultdict(list)
    for s in iter_synsets(wordnet_dir):
        if s.index % 2 == 1 and s.lexname in CLASSES and s.gloss not in seen:
            pools[s.lexname].append(s)
    rng = random.Random(seed)
    rows = []
    for label in CLASSES:
        if len(pools[label]) < per_class:
            raise ValueError(f"{label} has only {len(pools[label])} held-out synsets")
        chosen = rng.sample(pools[label], per_class)
        n_test = round(per_class * test_share)
        for rank, s in enumerate(chosen):
            split = "test" if rank < n_test else "train"
            rows.append(
                {"split": split, "label": label, "index": str(s.index), "synset": s.synset,
                 "gloss": s.gloss}
            )  # fmt: skip
    rows.sort(key=lambda r: (r["split"] != "train", int(r["index"])))
    return rows


def write_tsv(path: Path, rows: list[dict[str, str]]) -> None:
    """Plain tab-separated lines with a header; no quoting (glosses hold no tabs or newlines)."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(COLUMNS) + "\n")
        for row in rows:
            values = [row[c] for c in COLUMNS]
            if any("\t" in v or "\n" in v for v in values):
                raise ValueError(f"a tab or newline in {values}")
            f.write("\t".join(values) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output .tsv")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = build(per_class=args.per_class, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_tsv(args.out, rows)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
