"""What a safetensors file of an artefact is, in its own header: name, model, dim, tokenizer.

Every safetensors file an artefact holds (`vectors.safetensors`, a model's own files such
as `encoder.safetensors`) carries `__metadata__` (string to string, as the format allows)
so a file copied out of its version directory still says what it is:

* `name`: the artefact's name; `model`: the model kind (sgns, glove, mlm, ...);
* `dim` and `vocab_size`: the shape of the input embedding matrix;
* `tokenizer`: the tokenize settings, as sorted JSON;
* `embedpipe_version`: the package version that wrote it; `embedpipe_format`: this list's
  version ("format" is left to the convention of other tools: "pt" for transformers).

The store's version number (v0003) and the publish time are not in the file: the file is
written before publish claims a number, and publish compares files by sha256 to return the
existing version for identical content (`skip_unchanged`); both live in manifest.json.

safetensors writes metadata keys in a random order (a Rust HashMap: the same tensors and
metadata give other bytes in another process), so `stamp` writes the header itself,
canonically: metadata keys sorted, tensors in the order and at the offsets safetensors gave
them, data bytes copied untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embedpipe.artefacts.files import ArtefactError, filesystem
from embedpipe.version import __version__

FORMAT = "embedpipe-artefact/1"
METADATA_KEY = "__metadata__"
MAX_HEADER = 100_000_000  # safetensors' own limit on the header's size
ALIGN = 8  # safetensors pads its header with spaces to a multiple of 8 bytes


def artefact_metadata(
    name: str, kind: str, dim: int, vocab_size: int, tokenizer: Mapping[str, Any] | None
) -> dict[str, str]:
    """The metadata every safetensors file of artefact `name` carries (strings only)."""
    return {
        "embedpipe_format": FORMAT,
        "name": name,
        "model": kind,
        "dim": str(dim),
        "vocab_size": str(vocab_size),
        "tokenizer": json.dumps(dict(tokenizer or {}), sort_keys=True),
        "embedpipe_version": __version__,
    }


def _read_header(f: Any, where: object) -> tuple[dict[str, Any], int]:
    """(header object, bytes before the data) of an open safetensors file."""
    prefix = f.read(8)
    if len(prefix) != 8:
        raise ArtefactError(f"{where} is not a safetensors file: shorter than 8 bytes")
    (size,) = struct.unpack("<Q", prefix)
    if size > MAX_HEADER:
        raise ArtefactError(f"{where} is not a safetensors file: header of {size} bytes")
    try:
        header = json.loads(f.read(size))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtefactError(f"{where} is not a safetensors file: bad header ({e})") from e
    if not isinstance(header, dict):
        raise ArtefactError(f"{where} is not a safetensors file: the header is not an object")
    return header, 8 + size


def read_metadata(location: str | os.PathLike[str]) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (path or fsspec URL); only its header is read."""
    fs, path = filesystem(location)
    with fs.open(path, "rb") as f:
        header, _ = _read_header(f, location)
    metadata = header.get(METADATA_KEY) or {}
    if not isinstance(metadata, dict):
        raise ArtefactError(f"{location}: {METADATA_KEY} must be an object of strings")
    return {str(k): str(v) for k, v in metadata.items()}


def canonical_header(header: Mapping[str, Any], metadata: Mapping[str, str]) -> bytes:
    """The length-prefixed header of `header`'s tensors with `metadata` (keys sorted),
    padded with spaces to a multiple of 8 bytes."""
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ValueError(f"safetensors metadata must map strings to strings: {bad}")
    tensors = {k: v for k, v in header.items() if k != METADATA_KEY}
    ordered = {METADATA_KEY: dict(sorted(metadata.items()))} if metadata else {}
    text = json.dumps({**ordered, **tensors}, separators=(",", ":"), ensure_ascii=False)
    data = text.encode()
    data += b" " * (-len(data) % ALIGN)
    return struct.pack("<Q", len(data)) + data


def stamp(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], metadata: Mapping[str, str]
) -> Path:
    """Write local safetensors file `src` to `dst` with `metadata` merged into its own (ours
    win) and a canonical header; `dst` may be `src`. Returns `dst`."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".tmp-{uuid.uuid4().hex}-{dst.name}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with src.open("rb") as fin:
            header, start = _read_header(fin, src)
            own = header.get(METADATA_KEY) or {}
            with tmp.open("wb") as fout:
                fout.write(canonical_header(header, {**own, **metadata}))
                fin.seek(start)
                shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
