"""safetensors metadata of artefact files: merged in, read back, and the same bytes every time."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import embedpipe
from embedpipe.artefacts import ArtefactError
from embedpipe.artefacts.metadata import (
    artefact_metadata,
    canonical_header,
    read_metadata,
    stamp,
)

TENSORS = {
    "vectors": np.arange(24, dtype=np.float32).reshape(6, 4) / 7,
    "counts": np.array([3, 1, 4], dtype=np.int64),
}
META = artefact_metadata("emb", "sgns", 4, 6, {"kind": "word", "lowercase": True})

# Writes the same tensors and metadata as this module, stamped, and prints the file's sha256.
WRITER = """
import hashlib, sys
import numpy as np
from safetensors.numpy import save_file
from embedpipe.artefacts.metadata import artefact_metadata, stamp
tensors = {"vectors": np.arange(24, dtype=np.float32).reshape(6, 4) / 7,
           "counts": np.array([3, 1, 4], dtype=np.int64)}
meta = artefact_metadata("emb", "sgns", 4, 6, {"kind": "word", "lowercase": True})
save_file(tensors, sys.argv[1], metadata=meta)
stamp(sys.argv[1], sys.argv[1], meta)
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())
"""


def header_of(path: Path) -> tuple[int, bytes]:
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return size, data[8 : 8 + size]


def test_stamp_merges_metadata_and_keeps_every_tensor(tmp_path: Path) -> None:
    src = tmp_path / "plain.safetensors"
    save_file(TENSORS, str(src), metadata={"format": "np", "name": "old"})
    out = stamp(src, tmp_path / "sub" / "stamped.safetensors", META)
    loaded = load_file(str(out))
    for name, tensor in TENSORS.items():
        np.testing.assert_array_equal(loaded[name], tensor)
        assert loaded[name].dtype == tensor.dtype
    with safe_open(str(out), "np") as f:
        assert f.metadata() == {**META, "format": "np"}  # ours win, the file's own stay
    assert read_metadata(out) == {**META, "format": "np"}
    assert read_metadata(src) == {"format": "np", "name": "old"}  # the source is untouched
    size, header = header_of(out)
    assert size % 8 == 0
    keys = list(json.loads(header)["__metadata__"])
    assert keys == sorted(keys)
    assert META["tokenizer"] == '{"kind": "word", "lowercase": true}'
    assert META["embedpipe_version"] == embedpipe.__version__ and META["dim"] == "4"


def test_stamp_in_place_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    save_file(TENSORS, str(path))
    assert read_metadata(path) == {}
    assert stamp(path, path, {"name": "x"}) == path
    assert read_metadata(path) == {"name": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


def test_identical_content_gives_identical_bytes_in_every_process(tmp_path: Path) -> None:
    """safetensors orders metadata keys at random per process; a stamped file does not, so
    publish's sha256 comparison (skip_unchanged) sees identical trainings as identical."""
    env = {**os.environ, "PYTHONPATH": str(Path(embedpipe.__file__).resolve().parents[1])}
    digests = {
        subprocess.run(
            [sys.executable, "-c", WRITER, str(tmp_path / f"{i}.safetensors")],
            check=True, capture_output=True, text=True, env=env,
        ).stdout.strip()
        for i in range(3)
    }  # fmt: skip
    local = tmp_path / "here.safetensors"
    save_file(TENSORS, str(local))
    stamp(local, local, META)
    assert digests == {hashlib.sha256(local.read_bytes()).hexdigest()}


def test_read_metadata_of_a_url_and_of_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    save_file(TENSORS, str(path))
    stamp(path, path, META)
    url = f"memory://metadata-{os.getpid()}/v.safetensors"
    with fsspec.open(url, "wb") as f:
        f.write(path.read_bytes())
    assert read_metadata(url) == META
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ArtefactError, match="bad.safetensors is not a safetensors file"):
        read_metadata(bad)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    with pytest.raises(ArtefactError, match="short.safetensors .*shorter than 8 bytes"):
        stamp(short, tmp_path / "out.safetensors", META)
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(ValueError, match="strings to strings"):
        canonical_header({}, {"dim": 4})  # type: ignore[dict-item]
