"""Turn WordNet's data files (Debian package `wordnet-base`) into plain English text.

One line per synset: its lemmas, then its gloss and usage examples, e.g.
``dog, domestic dog, Canis familiaris: a member of the genus Canis ...; "the dog barked all night"``.
Used to build the bundled sample corpus and, with other texts, the benchmark corpus.
WordNet 3.0 Copyright 2006 by Princeton University (licence in data/sample/LICENSE-WordNet).
"""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Iterator
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
PARTS = ("noun", "verb", "adj", "adv")


def iter_synset_lines(wordnet_dir: Path = WORDNET_DIR) -> Iterator[str]:
    """Yield one text line per synset of every part of speech, in file order."""
    for part in PARTS:
        with open(wordnet_dir / f"data.{part}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue  # licence header
                head, gloss = line.rstrip().split(" | ", 1)
                fields = head.split()
                n_words = int(fields[3], 16)
                lemmas = [fields[4 + 2 * i].split("(")[0].replace("_", " ") for i in range(n_words)]
                yield f"{', '.join(lemmas)}: {gloss.strip()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output .txt or .txt.gz")
    parser.add_argument("--every", type=int, default=1, help="keep every n-th synset")
    args = parser.parse_args()
    opener = gzip.open if args.out.suffix == ".gz" else open
    with opener(args.out, "wt", encoding="utf-8") as out:
        for i, line in enumerate(iter_synset_lines()):
            if i % args.every == 0:
                out.write(line + "\n")


if __name__ == "__main__":
    main()
