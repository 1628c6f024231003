"""examples/classify.py's fourth row: fine-tuning a masked-LM artefact's encoder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file

from embedpipe.artefacts import ArtefactStore, load
from embedpipe.artefacts.encoder import write_encoder_files
from embedpipe.schemas import SPECIAL_TOKENS
from embedpipe.train.checkpoint import save_checkpoint
from embedpipe.train.mlm import CLS_ID, SEP_ID, EncoderConfig, MaskedLM

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ANIMALS = ["dog", "cat", "horse", "bird", "fish", "cow"]
TOOLS = ["hammer", "saw", "drill", "wrench", "knife", "axe"]


@pytest.fixture(scope="module")
def classify() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "example_classify_encoder", EXAMPLES / "classify.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["example_classify_encoder"] = module
    spec.loader.exec_module(module)
    return module


def tiny_data(path: Path) -> Path:
    """Two classes of glosses naming animals or tools (the layout of the shipped TSV)."""
    rng = np.random.default_rng(0)
    lines = ["split\tlabel\tindex\tsynset\tgloss"]
    for i in range(120):
        label, pool = ("noun.animal", ANIMALS) if i % 2 else ("noun.artifact", TOOLS)
        gloss = " ".join(["a", *rng.choice(pool, 3), "or", "Unseenword"])
        lines.append(f"{'test' if i % 5 == 0 else 'train'}\t{label}\t{2 * i + 1}\t0-n\t{gloss}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def mlm_artefact(tmp_path: Path) -> Path:
    """A published word-level masked-LM artefact (random weights) over the tiny words."""
    tokens = [*SPECIAL_TOKENS, "a", "or", *ANIMALS, *TOOLS]
    model = MaskedLM(EncoderConfig(len(tokens), 16, 1, 2, 32, max_len=16), seed=3)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = {"encoder": model.config.to_dict()}
    step = save_checkpoint(tmp_path / "train" / "checkpoints", 1, tensors, state, keep=1)
    files = write_encoder_files(tmp_path / "train", {"checkpoint": step.name}, tmp_path)
    save_file({"vectors": model.token.weight.detach().numpy()}, tmp_path / "vectors.safetensors")
    pq.write_table(
        pa.table({"id": pa.array(range(len(tokens)), pa.int32()), "token": tokens,
                  "count": pa.array([0] * 5 + [10] * (len(tokens) - 5), pa.int64())}),
        tmp_path / "vocab.parquet",
    )  # fmt: skip
    files |= {n: tmp_path / n for n in ("vectors.safetensors", "vocab.parquet")}
    manifest = {"model": {"kind": "mlm"}, "tokenizer": {"kind": "word", "lowercase": True}}
    return Path(ArtefactStore(tmp_path / "store").publish("tiny-mlm", files, manifest))


def test_a_masked_lm_artefact_gets_a_fourth_row(classify: ModuleType, tmp_path: Path) -> None:
    data, artefact = tiny_data(tmp_path / "data.tsv"), mlm_artefact(tmp_path)
    results = classify.main(
        ["--artefact", str(artefact), "--data", str(data), "--epochs", "2",
         "--encoder-epochs", "6", "--encoder-lr", "3e-3"]
    )  # fmt: skip
    assert list(results) == ["random", "frozen", "fine-tuned", "fine-tuned encoder"]
    # The words name the class: fine-tuning the encoder learns it.
    assert results["fine-tuned encoder"] >= 0.9
    table = classify.format_results(results, 0.5)
    assert "fine-tuned encoder" in table and table.count("\n") == 6


def test_encoder_inputs_use_the_artefacts_tokenizer(classify: ModuleType, tmp_path: Path) -> None:
    emb = load(mlm_artefact(tmp_path))
    ids, segments, mask = classify.encode_texts(emb, ["A dog, or a SAW!", "zebra"])
    assert ids.tolist() == [
        [CLS_ID, emb.index("a"), emb.index("dog"), emb.index("or"), emb.index("a"),
         emb.index("saw"), SEP_ID],
        [CLS_ID, 1, SEP_ID, 0, 0, 0, 0],
    ]  # fmt: skip
    assert mask.sum(1).tolist() == [7, 3] and int(segments.sum()) == 0
    model = classify.EncoderClassifier(emb.to_torch_encoder(), 3).eval()
    with torch.no_grad():
        both = model(ids, segments, mask)
        alone = model(ids[1:, :3], segments[1:, :3], mask[1:, :3])
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)
