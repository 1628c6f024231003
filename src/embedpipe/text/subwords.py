"""Character n-grams of words hashed into buckets, as fastText (Bojanowski et al. 2017).

A word is wrapped in `<` and `>`; its n-grams are the runs of n = minn..maxn characters
(UTF-8 code points: a continuation byte never starts or ends one) of the wrapped word,
in fastText's order (by start, then by length), a repeated n-gram as often as it occurs.
An n-gram's bucket is the 32-bit FNV-1a hash of its UTF-8 bytes modulo `bucket`, with
fastText's sign quirk: each byte is read as a signed char and sign-extended to 32 bits
before the XOR (`h ^= uint32(int8(byte))`), so bytes >= 0x80 flip the top 24 bits too.
fastText leaves out a single-character n-gram that is the `<` or the `>` (only minn = 1
reaches it); so does this.

`ngram_buckets` is the one implementation: plain Python on a NumPy byte array (what the
loader runs, without numba) and compiled as it is by training (`train.subwords`), so both
give the same ids by construction (tested).
"""

from __future__ import annotations

import numpy as np

BOW = "<"  # fastText's begin-of-word marker
EOW = ">"  # ... and end-of-word marker
FNV_OFFSET = 2166136261  # 32-bit FNV-1a offset basis
FNV_PRIME = 16777619  # 32-bit FNV prime
HASH = "fnv1a32-signed-bytes"  # the scheme's name in an artefact's subwords.json
_MASK = 0xFFFFFFFF


def wrapped_bytes(word: str) -> np.ndarray:
    """The UTF-8 bytes of `<word>` as a uint8 array (what `ngram_buckets` reads)."""
    return np.frombuffer((BOW + word + EOW).encode("utf-8"), dtype=np.uint8)


def max_ngrams(n_bytes: int, minn: int, maxn: int) -> int:
    """An upper bound on the n-grams of a wrapped word of `n_bytes` bytes."""
    return n_bytes * max(0, maxn - minn + 1)


def ngram_buckets(data: np.ndarray, minn: int, maxn: int, bucket: int, out: np.ndarray) -> int:
    """Write the buckets of the n-grams of the wrapped word `data` (uint8 UTF-8 bytes) into
    `out` (at least `max_ngrams(len(data), ...)` long), in fastText's order; returns how
    many. Runs as plain Python and compiled by numba alike (no Python objects inside)."""
    size = len(data)
    count = 0
    for i in range(size):
        if (int(data[i]) & 0xC0) == 0x80:  # a continuation byte starts no character
            continue
        h = FNV_OFFSET
        j = i
        n = 1
        while j < size and n <= maxn:
            while True:  # add the character's bytes: its first, then its continuations
                byte = int(data[j])
                signed = byte | 0xFFFFFF00 if byte >= 0x80 else byte
                h = ((h ^ signed) * FNV_PRIME) & _MASK
                j += 1
                if j >= size or (int(data[j]) & 0xC0) != 0x80:
                    break
            if n >= minn and not (n == 1 and (i == 0 or j == size)):
                out[count] = h % bucket
                count += 1
            n += 1
    return count


def word_ngrams(word: str, minn: int, maxn: int, bucket: int) -> np.ndarray:
    """The buckets (0..bucket-1, int64) of the n-grams of `<word>`, in fastText's order."""
    data = wrapped_bytes(word)
    out = np.empty(max_ngrams(len(data), minn, maxn), dtype=np.int64)
    return out[: ngram_buckets(data, minn, maxn, bucket, out)]
