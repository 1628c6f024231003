"""examples/classify.py's encoder rows: a language-model artefact's model (masked LM, causal
LM or biLM) read the same way, frozen under a linear layer or fine-tuned with it."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file
from torch import nn

from embedpipe.artefacts import ArtefactStore, load
from embedpipe.artefacts.bilm import write_bilm_files
from embedpipe.artefacts.decoder import write_decoder_files
from embedpipe.artefacts.encoder import write_encoder_files
from embedpipe.schemas import SPECIAL_TOKENS
from embedpipe.train.architecture import BidirectionalConfig, DecoderConfig
from embedpipe.train.bilm import BiLM
from embedpipe.train.checkpoint import save_checkpoint
from embedpipe.train.clm import CausalLM
from embedpipe.train.mlm import CLS_ID, SEP_ID, EncoderConfig, MaskedLM

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ANIMALS = ["dog", "cat", "horse", "bird", "fish", "cow"]
TOOLS = ["hammer", "saw", "drill", "wrench", "knife", "axe"]
TOKENS = [*SPECIAL_TOKENS, "a", "or", *ANIMALS, *TOOLS]
ROWS = ["random", "frozen", "fine-tuned", "frozen encoder", "fine-tuned encoder"]

# kind: (a tiny model with random weights, its checkpoint state key, its artefact files'
# writer, the names of the weights its token vectors never read: the LM head)
MODELS: dict[str, tuple[Callable[[], nn.Module], str, Callable[..., Any], tuple[str, ...]]] = {
    "mlm": (
        lambda: MaskedLM(EncoderConfig(len(TOKENS), 16, 1, 2, 32, max_len=16), seed=3),
        "encoder", write_encoder_files, ("head_", "output_bias"),
    ),
    "clm": (
        lambda: CausalLM(DecoderConfig(len(TOKENS), 16, 1, 2, 32, max_len=16), seed=3),
        "decoder", write_decoder_files, (),
    ),
    "bilm": (
        lambda: BiLM(BidirectionalConfig(len(TOKENS), 16, 16, 2, max_len=16), seed=3),
        "bilm", write_bilm_files, ("output_bias",),
    ),
}  # fmt: skip


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


def lm_artefact(tmp_path: Path, kind: str = "mlm") -> Path:
    """A published word-level language-model artefact of `kind` (random weights) over the
    tiny words."""
    build, state_key, write_files, _ = MODELS[kind]
    model = build()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = {state_key: model.config.to_dict()}
    step = save_checkpoint(tmp_path / "train" / "checkpoints", 1, tensors, state, keep=1)
    files = write_files(tmp_path / "train", {"checkpoint": step.name}, tmp_path)
    save_file({"vectors": model.token.weight.detach().numpy()}, tmp_path / "vectors.safetensors")
    pq.write_table(
        pa.table({"id": pa.array(range(len(TOKENS)), pa.int32()), "token": TOKENS,
                  "count": pa.array([0] * 5 + [10] * (len(TOKENS) - 5), pa.int64())}),
        tmp_path / "vocab.parquet",
    )  # fmt: skip
    files |= {n: tmp_path / n for n in ("vectors.safetensors", "vocab.parquet")}
    manifest = {"model": {"kind": kind}, "tokenizer": {"kind": "word", "lowercase": True}}
    return Path(ArtefactStore(tmp_path / "store").publish(f"tiny-{kind}", files, manifest))


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_language_model_artefact_gets_both_encoder_rows(
    classify: ModuleType, tmp_path: Path, kind: str
) -> None:
    data, artefact = tiny_data(tmp_path / "data.tsv"), lm_artefact(tmp_path, kind)
    results = classify.main(
        ["--artefact", str(artefact), "--data", str(data), "--epochs", "2",
         "--encoder-epochs", "6", "--encoder-lr", "3e-3"]
    )  # fmt: skip
    assert list(results) == ROWS
    assert all(0.0 <= acc <= 1.0 for acc in results.values())
    # The words name the class: fine-tuning the encoder learns it.
    assert results["fine-tuned encoder"] >= 0.9
    table = classify.format_results(results, 0.5)
    assert "frozen encoder" in table and table.count("\n") == 7


@pytest.mark.parametrize("kind", list(MODELS))
def test_frozen_row_keeps_the_encoder_and_fine_tuning_changes_it(
    classify: ModuleType, tmp_path: Path, kind: str
) -> None:
    emb = load(lm_artefact(tmp_path, kind))
    train, _, _ = classify.read_examples(tiny_data(tmp_path / "data.tsv"))
    inputs, labels = emb.encoder_inputs(train.texts), torch.tensor(train.labels)
    settings = classify.EncoderSettings(epochs=2, encoder_epochs=1)
    original = emb.to_torch_encoder().state_dict()
    head = MODELS[kind][3]
    for row in classify.ENCODER_KINDS:
        model = classify.build_encoder_classifier(emb, 2)
        linear = model.linear.weight.detach().clone()
        classify.train_encoder_row(row, model, inputs, labels, settings)
        state = model.encoder.state_dict()
        changed = {name for name, v in original.items() if not torch.equal(state[name], v)}
        assert not torch.equal(model.linear.weight, linear)  # the linear layer always learns
        if row == "frozen encoder":
            assert changed == set()  # bit for bit
        else:  # every weight the token vectors read, and nothing of the unused LM head
            assert changed == {name for name in original if not name.startswith(head)}


@pytest.mark.parametrize("kind", list(MODELS))
def test_pooled_vectors_are_the_mean_of_the_artefacts_encode(
    classify: ModuleType, tmp_path: Path, kind: str
) -> None:
    """The encoder rows read what `emb.encode` gives (Transformers: the last layer; biLM: the
    plain average of its layers), whatever the padding of the batch."""
    emb = load(lm_artefact(tmp_path, kind))
    texts = ["A dog, or a SAW!", "zebra", "cat cat horse"]
    model = classify.build_encoder_classifier(emb, 3)
    pooled = classify.encoder_outputs(model, emb.encoder_inputs(texts), pooled=True)
    alone = np.stack([emb.encode([text]).vectors[0].mean(0) for text in texts])
    np.testing.assert_allclose(pooled.numpy(), alone, atol=1e-5, rtol=0)
    assert pooled.shape == (3, model.encoder.vector_width)


def test_encoder_inputs_use_the_artefacts_tokenizer(classify: ModuleType, tmp_path: Path) -> None:
    emb = load(lm_artefact(tmp_path))
    ids, lengths = emb.encoder_inputs(["A dog, or a SAW!", "zebra"])
    assert ids.tolist() == [
        [CLS_ID, emb.index("a"), emb.index("dog"), emb.index("or"), emb.index("a"),
         emb.index("saw"), SEP_ID],
        [CLS_ID, 1, SEP_ID, 0, 0, 0, 0],
    ]  # fmt: skip
    assert lengths.tolist() == [7, 3]
    model = classify.EncoderClassifier(emb.to_torch_encoder(), 3).eval()
    with torch.no_grad():
        both = model(ids, lengths)
        alone = model(ids[1:, :3], lengths[1:])
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)
