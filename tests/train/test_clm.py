"""The causal LM's pieces: causality, padding, weight tying, AdamW groups, packing, batches."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedpipe.config import ConfigError, TrainConfig, load_config
from embedpipe.train.buckets import (
    heldout_mask,
    iter_bucket_batches,
    iter_heldout_batches,
    rank_bucket_chunks,
)
from embedpipe.train.clm import BOS_ID, PAD_ID, CausalLM, DecoderConfig, causal_pack
from embedpipe.train.registry import CLMConfig, MLMConfig
from embedpipe.train.transformer import IGNORE, N_SPECIAL, TransformerLayer, decay_groups

HERE = Path(__file__).resolve().parent
UNK_ID = 1
VOCAB = 50


def load_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlm_corpus", HERE / "mlm_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlm_corpus"] = module
    spec.loader.exec_module(module)
    return module


corpus = load_helper()


def small_model(seed: int = 0, **kw: object) -> CausalLM:
    config = DecoderConfig(vocab_size=VOCAB, width=16, layers=2, heads=4, ffn=32, max_len=24, **kw)
    return CausalLM(config, seed=seed)


def test_no_position_sees_a_later_token() -> None:
    model = small_model().eval()
    ids = torch.from_numpy(np.random.default_rng(0).integers(N_SPECIAL, VOCAB, (3, 12)))
    with torch.no_grad():
        states = model.hidden_states(ids)
        for t in range(11):
            changed = ids.clone()
            changed[:, t + 1 :] = (changed[:, t + 1 :] + 7 - N_SPECIAL) % (
                VOCAB - N_SPECIAL
            ) + N_SPECIAL
            after = model.hidden_states(changed)
            for before, now in zip(states, after, strict=True):
                torch.testing.assert_close(now[:, : t + 1], before[:, : t + 1], atol=1e-6, rtol=0)
            # ... while the changed position itself does move.
            assert not torch.allclose(after[-1][:, t + 1], states[-1][:, t + 1])


def test_a_right_padded_batch_gives_the_outputs_of_the_unpadded_rows() -> None:
    model = small_model().eval()
    rng = np.random.default_rng(1)
    pieces = [rng.integers(N_SPECIAL, VOCAB, n) for n in (3, 11, 1, 7)]
    inputs, labels, lengths = causal_pack(pieces)
    batch = torch.from_numpy(inputs)
    with torch.no_grad():
        padded = model.encode(batch)
        for row, n in enumerate(lengths):
            alone = model.encode(batch[row : row + 1, :n])
            torch.testing.assert_close(padded[row, :n], alone[0], atol=1e-5, rtol=0)
            inner = model.encode(batch[row : row + 1, :n], layer=1)
            torch.testing.assert_close(model.encode(batch, layer=1)[row, :n], inner[0])
    with pytest.raises(ValueError, match="max_len"):
        model.encode(torch.full((1, 25), 7))
    with pytest.raises(ValueError, match="layer"):
        model.encode(batch, layer=3)


def test_a_causal_layer_refuses_a_padding_mask() -> None:
    layer = TransformerLayer(8, 2, 16, 0.0, causal=True)
    with pytest.raises(ValueError, match="causal"):
        layer(torch.zeros(1, 3, 8), torch.ones(1, 1, 1, 3, dtype=torch.bool))


def test_causal_pack_shifts_by_one_and_ignores_specials() -> None:
    inputs, labels, lengths = causal_pack([np.array([7, UNK_ID, 9]), np.array([5])])
    assert lengths.tolist() == [3, 1]
    assert inputs.tolist() == [[BOS_ID, 7, UNK_ID], [BOS_ID, PAD_ID, PAD_ID]]
    assert labels.tolist() == [[7, IGNORE, 9], [5, IGNORE, IGNORE]]


def test_loss_is_the_next_token_cross_entropy() -> None:
    model = small_model().eval()
    inputs, labels, _ = causal_pack([np.array([7, 8, UNK_ID, 9]), np.array([12, 30])])
    ids, targets = torch.from_numpy(inputs), torch.from_numpy(labels)
    with torch.no_grad():
        loss = model(ids, targets)
        logits = model.logits(model.encode(ids))
        rows, cols = [0, 0, 0, 1, 1], [0, 1, 3, 0, 1]  # [UNK] and padding are no targets
        expected = F.cross_entropy(logits[rows, cols], torch.tensor([7, 8, 9, 12, 30]))
    torch.testing.assert_close(loss, expected)
    model.train()
    model(ids, torch.full_like(targets, IGNORE)).backward()  # no target: a zero loss
    assert all(p.grad is not None for p in model.parameters())


def test_the_output_layer_is_the_token_embedding() -> None:
    tied, untied = small_model(), small_model(tie_output=False)
    assert tied.output is None
    names = {n for n, _ in untied.named_parameters()} - {n for n, _ in tied.named_parameters()}
    assert names == {"output.weight"}
    h = torch.randn(3, 16)
    torch.testing.assert_close(tied.logits(h), h @ tied.token.weight.T)
    # One tensor: a gradient step on the output moves the input embedding.
    ids = torch.tensor([[BOS_ID, 7, 8]])
    tied(ids, torch.tensor([[7, 8, 9]])).backward()
    assert tied.token.weight.grad is not None and tied.token.weight.grad[9].abs().sum() > 0
    torch.testing.assert_close(untied.logits(h), h @ untied.output.weight.T)


def test_weight_decay_only_on_matrices() -> None:
    model = small_model()
    decay, plain = decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in plain["params"]}
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {
        "token.weight",
        "position.weight",
        "layers.0.qkv.weight",
        "layers.1.ffn_out.weight",
    } <= (decayed)
    assert {"final_norm.weight", "final_norm.bias", "layers.0.attention_norm.weight"} <= undecayed
    assert {"layers.1.qkv.bias", "layers.0.ffn_in.bias"} <= undecayed
    assert not any(n.endswith("bias") or "norm" in n for n in decayed)
    assert decayed | undecayed == set(names.values())


def test_initialisation_is_seeded_and_pad_row_is_zero() -> None:
    a, b, c = small_model(seed=3), small_model(seed=3), small_model(seed=4)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q), name
        if p.ndim >= 2:
            assert not torch.equal(p, r), name
    assert torch.count_nonzero(a.token.weight[PAD_ID]) == 0


def test_decoder_config_round_trip_and_checks() -> None:
    config = DecoderConfig.from_clm(CLMConfig(width=64, heads=8, layers=3), vocab_size=100)
    assert DecoderConfig.from_dict(config.to_dict()) == config
    assert (config.width, config.heads, config.layers, config.bos_id) == (64, 8, 3, BOS_ID)
    with pytest.raises(ValueError, match="unknown decoder config key"):
        DecoderConfig.from_dict({**config.to_dict(), "mask_id": 4})
    with pytest.raises(ValueError, match="special"):
        DecoderConfig(vocab_size=N_SPECIAL)


def test_clm_config_shares_the_transformer_fields_and_not_the_masking() -> None:
    shared = {f.name for f in dataclasses.fields(CLMConfig)}
    assert shared < {f.name for f in dataclasses.fields(MLMConfig)}
    assert not shared & {"mask_prob", "mask_token_prob", "random_token_prob", "pair_prob"}
    config = load_config(None, ["train.model=clm", "train.clm.width=32", "train.clm.heads=2"])
    assert config.train.options == CLMConfig(width=32, heads=2)
    assert config.train.to_table()["clm"]["width"] == 32
    with pytest.raises(ConfigError, match="train.clm.mask_prob"):
        load_config(None, ["train.model=clm", "train.clm.mask_prob=0.2"])
    with pytest.raises(ConfigError, match="multiple of heads"):
        CLMConfig(width=30, heads=4)
    with pytest.raises(ConfigError, match="CLMConfig"):
        TrainConfig(model="mlm", options=CLMConfig())


# -- batches from the buckets table ----------------------------------------------------------

CONFIG = CLMConfig(max_len=40, max_tokens=120, heldout=0.1, chunk_rows=50)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.write_mlm_workdir(tmp_path_factory.mktemp("clm") / "work", n_sequences=600)


def sequences_of(data: tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    """The stored sequences of a causal batch: inputs after [CLS], then the last label."""
    inputs, labels = (t.numpy() for t in data)
    out = []
    for row, label in zip(inputs, labels, strict=True):
        n = int((row != PAD_ID).sum())
        last = label[n - 1] if label[n - 1] != IGNORE else UNK_ID
        out.append((*row[1:n].tolist(), int(last)))
    return out


def test_causal_batches_cover_the_training_split_once_under_the_budget(workdir: Path) -> None:
    table = str(workdir / "buckets")
    chunks = rank_bucket_chunks(table, 0, 1, CONFIG.chunk_rows)
    batches = [b for c in iter_bucket_batches(CONFIG, chunks, 35, 1, 0, 0) for b in c]
    assert len(batches) > 20 and len({b.bucket for b in batches}) == 4
    for batch in batches:
        ids, labels = batch.data
        assert batch.slots == ids.numel() <= CONFIG.max_tokens
        assert batch.tokens == int((ids != PAD_ID).sum())
        assert batch.targets == int((labels != IGNORE).sum())
        assert {corpus.bucket_of(len(s)) for s in sequences_of(batch.data)} == {batch.bucket}

    import pyarrow.parquet as pq

    stored = [tuple(s) for s in pq.read_table(table).column("ids").to_pylist()]
    offsets = np.cumsum([0] + [len(s) for s in stored])
    # The masked LM's held-out rule: the same sequences are set aside.
    held = heldout_mask(np.concatenate(stored).astype(np.int32), offsets, CONFIG.heldout)
    seen = Counter(s for b in batches for s in sequences_of(b.data))
    assert seen == Counter(s for s, h in zip(stored, held, strict=True) if not h)
    heldout = Counter(
        s for b in iter_heldout_batches(CONFIG, chunks, 35, 1) for s in sequences_of(b.data)
    )
    assert heldout == Counter(s for s, h in zip(stored, held, strict=True) if h)
