"""A downstream vocabulary mapped onto loaded vectors (`Embeddings.align`), with a rule for
the words the vectors do not know."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from embedpipe.artefacts.keyed import Embeddings

Unknown = Literal["zeros", "random", "mean"]


def align(
    emb: Embeddings, tokens: Sequence[str], unknown: Unknown = "random", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, found): row i of the float32 (len(tokens), dim) matrix is the vector of
    tokens[i] (found by the lookup rule of `Embeddings`); `found` is the boolean mask of rows
    that were looked up. The other rows follow `unknown`:

    * "zeros": zero vectors;
    * "random": independent draws from N(0, s^2 I) with s = m / sqrt(dim), where m is the
      mean L2 norm of the found vectors: E ||row||^2 = m^2, so an unknown row is about as
      long as a known one and pooled features keep their scale (numbers from `seed`);
    * "mean": the mean of the found vectors.

    Special tokens are matched like any token but left out of m and of the mean; when no
    ordinary word is found, the statistics come from all ordinary words of the embedding.
    """
    if unknown not in ("zeros", "random", "mean"):
        raise ValueError(f"unknown must be 'zeros', 'random' or 'mean', got {unknown!r}")
    ids = np.array(
        [-1 if (i := emb.lookup(t)) is None else i for t in tokens], dtype=np.int64
    ).reshape(-1)
    found = ids >= 0
    matrix = np.zeros((len(ids), emb.dim), dtype=np.float32)
    matrix[found] = emb.vectors[ids[found]]
    missing = int((~found).sum())
    if missing == 0 or unknown == "zeros":
        return matrix, found
    words = emb.word_ids()
    known = np.intersect1d(ids[found], words)
    reference = emb.vectors[known if len(known) else words]
    if not len(reference):
        reference = np.zeros((1, emb.dim), np.float32)
    if unknown == "mean":
        matrix[~found] = reference.mean(axis=0)
    else:
        scale = float(np.linalg.norm(reference, axis=1).mean()) / np.sqrt(emb.dim)
        rng = np.random.default_rng(seed)
        matrix[~found] = rng.standard_normal((missing, emb.dim)) * scale
    return matrix, found
