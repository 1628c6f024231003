"""biLM artefacts: publish (held-out and unigram perplexity), load (verified), encode() equal
to the model's layer mix, mix weights and gamma respected."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from embedpipe import schemas as S
from embedpipe.artefacts import ArtefactError, ArtefactStore, load, sha256_file
from embedpipe.artefacts.bilm import FORMAT, BiLMEmbeddings, write_bilm_files
from embedpipe.artefacts.contextual import ENCODER_CONFIG_FILE
from embedpipe.artefacts.loader import ENCODER_FILE
from embedpipe.artefacts.publish import publish_training
from embedpipe.config import load_config
from embedpipe.train.bilm import BOS_ID, EOS_ID, BidirectionalConfig, BiLM
from embedpipe.train.checkpoint import latest_checkpoint, load_checkpoint
from embedpipe.train.loop import SUMMARY, train

TRAIN_DIR = Path(__file__).resolve().parents[1] / "train"
SETTINGS = [
    "name=tiny-bilm", "train.model=bilm", "train.epochs=3", "train.threads=1",
    "train.bilm.dim=8", "train.bilm.hidden=12", "train.bilm.max_len=12",
    "train.bilm.max_tokens=96", "train.bilm.chunk_rows=100", "train.bilm.heldout=0.1",
    "train.bilm.lr=0.02", "train.bilm.warmup_steps=5", "train.bilm.dropout=0.0",
]  # fmt: skip


def load_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlm_corpus", TRAIN_DIR / "mlm_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlm_corpus"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(artefact directory, training directory) of a tiny word-level biLM."""
    root = tmp_path_factory.mktemp("bilm-artefact")
    workdir = load_helper().write_mlm_workdir(root / "work", n_sequences=300)
    config = load_config(None, [*SETTINGS, f"workdir={workdir}", f"store={root / 'store'}"])
    train(config.train, str(workdir), root / "train")
    artefact = publish_training(config, root / "train", ArtefactStore(root / "store"))
    return Path(artefact), root / "train"


def reference_model(train_dir: Path) -> BiLM:
    """The trained model straight from its last checkpoint."""
    tensors, state = load_checkpoint(latest_checkpoint(train_dir / "checkpoints"))
    model = BiLM(BidirectionalConfig.from_dict(state["bilm"]))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    return model.eval()


def test_publish_lists_the_model_and_its_perplexities(published: tuple[Path, Path]) -> None:
    artefact, train_dir = published
    emb = load(artefact)
    assert isinstance(emb, BiLMEmbeddings)
    assert emb.manifest is not None and emb.manifest.model is not None
    assert emb.manifest.model.kind == "bilm"
    for name in (ENCODER_FILE, ENCODER_CONFIG_FILE, "vectors.safetensors", "vocab.parquet"):
        assert emb.manifest.files[name].sha256 == sha256_file(artefact / name)
    config = json.loads((artefact / ENCODER_CONFIG_FILE).read_text())
    assert config["format"] == FORMAT and config["architecture"]["eos_id"] == EOS_ID
    assert "token.weight" not in emb.encoder_weights
    assert "forward_layers.1.weight_hr_l0" in emb.encoder_weights  # the LSTM projection
    assert repr(emb).startswith("BiLMEmbeddings(V=35, dim=8, layers=2, hidden=12")

    summary = json.loads((train_dir / SUMMARY).read_text())
    metrics = emb.manifest.metrics
    assert metrics is not None and metrics.bilm is not None and metrics.clm is None
    bilm, heldout = metrics.bilm, summary["heldout"]
    assert bilm["heldout_perplexity"] == heldout[-1]["perplexity"]
    assert bilm["initial_heldout_perplexity"] == heldout[0]["perplexity"]
    assert bilm["unigram_heldout_perplexity"] == heldout[-1]["unigram_perplexity"]
    assert [h["epoch"] for h in bilm["heldout"]] == [0, 1, 2, 3]
    assert bilm["heldout_perplexity"] < bilm["unigram_heldout_perplexity"]


def test_encode_is_the_models_layer_mix(published: tuple[Path, Path]) -> None:
    artefact, train_dir = published
    emb = load(artefact)
    texts = ["w1 w2 w3", "W7 zebra w8 w9 w10", ""]
    out = emb.encode(texts)
    assert out.tokens == [["w1", "w2", "w3"], ["w7", "zebra", "w8", "w9", "w10"], []]
    assert [v.shape for v in out.vectors] == [(3, 16), (5, 16), (0, 16)]
    np.testing.assert_allclose(out.factors, [1 / 3] * 3, rtol=1e-6)

    model = reference_model(train_dir)
    ids = [BOS_ID, emb.index("w7"), S.UNK_ID, *map(emb.index, ["w8", "w9", "w10"]), EOS_ID]
    batch, lengths = torch.tensor([ids]), torch.tensor([len(ids)])
    weights = [2.0, -1.0, 0.5]
    with torch.no_grad():
        average = model.layer_mix(batch, lengths)[0, 1:-1].numpy()
        mixed = model.layer_mix(batch, lengths, weights, gamma=0.5)[0, 1:-1].numpy()
        states = model.layer_states(batch, lengths)[:, 0, 1:-1].numpy()
    np.testing.assert_allclose(out.vectors[1], average, atol=1e-5)
    weighted = emb.encode(texts[1], mix=weights, gamma=0.5)
    np.testing.assert_allclose(weighted.vectors[0], mixed, atol=1e-5)
    factors = np.exp(weights) / np.exp(weights).sum() * 0.5
    np.testing.assert_allclose(weighted.factors, factors, rtol=1e-6)
    np.testing.assert_allclose(weighted.vectors[0], np.tensordot(factors, states, 1), atol=1e-5)
    # A one-hot mix picks a layer: the embedding layer is each token's vector twice.
    top = emb.encode(texts[1], mix=[-50.0, -50.0, 50.0]).vectors[0]
    np.testing.assert_allclose(top, states[2], atol=1e-5)
    bottom = emb.encode(texts[1], mix=[50.0, -50.0, -50.0]).vectors[0]
    np.testing.assert_allclose(bottom[0], np.tile(emb["w7"], 2), atol=1e-5)
    tokens, layers = emb.encode_layers(texts)
    assert [x.shape for x in layers] == [(3, 3, 16), (3, 5, 16), (3, 0, 16)]
    np.testing.assert_allclose(layers[1], states, atol=1e-5)
    # Each text is read alone: batching and padding change nothing.
    alone = emb.encode([texts[0]], batch_size=1)
    np.testing.assert_allclose(alone.vectors[0], out.vectors[0], atol=1e-5)
    long = emb.encode(" ".join(["w3"] * 30))  # cut to max_len 12 less [CLS] and [SEP]
    assert long.vectors[0].shape == (10, 16)
    with pytest.raises(ValueError, match="3 numbers"):
        emb.encode(texts, mix=[1.0, 2.0])


def test_a_modified_model_is_refused(published: tuple[Path, Path], tmp_path: Path) -> None:
    artefact, _ = published
    copy = tmp_path / "copy"
    shutil.copytree(artefact, copy)
    target = copy / ENCODER_CONFIG_FILE
    target.chmod(0o644)
    target.write_text(target.read_text().replace('"hidden": 12', '"hidden": 16'))
    with pytest.raises(ArtefactError, match=ENCODER_CONFIG_FILE):
        load(copy)


def test_only_a_bilm_checkpoint_writes_bilm_files(
    published: tuple[Path, Path], tmp_path: Path
) -> None:
    _, train_dir = published
    summary = json.loads((train_dir / SUMMARY).read_text())
    files = write_bilm_files(train_dir, summary, tmp_path)
    assert set(files) == {ENCODER_FILE, ENCODER_CONFIG_FILE}
    other = tmp_path / "other"
    shutil.copytree(train_dir, other)
    state = other / "checkpoints" / summary["checkpoint"] / "state.json"
    state.chmod(0o644)
    data = json.loads(state.read_text())
    data["decoder"] = data.pop("bilm")
    state.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no embedpipe-bilm/1 checkpoint"):
        write_bilm_files(other, summary, tmp_path)
