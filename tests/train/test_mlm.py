"""The masked LM's pieces: masking statistics, packing, padding masks, the loss, AdamW groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedpipe.config import ConfigError, TrainConfig
from embedpipe.train.mlm import (
    CLS_ID,
    IGNORE,
    MASK_ID,
    N_SPECIAL,
    PAD_ID,
    SEP_ID,
    UNK_ID,
    EncoderConfig,
    MaskedLM,
    mask_tokens,
    pack,
    padding_mask,
)
from embedpipe.train.registry import MLMConfig
from embedpipe.train.transformer import decay_groups

VOCAB = 1000


def test_masking_rates_and_specials() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(N_SPECIAL, VOCAB, size=(400, 500))
    ids[:, 0] = CLS_ID
    ids[:, 250] = SEP_ID
    ids[rng.random(ids.shape) < 0.05] = UNK_ID
    ids[:, 400:] = PAD_ID  # padding
    inputs, labels = mask_tokens(ids, np.random.default_rng(1), VOCAB)

    special = ids < N_SPECIAL
    chosen = labels != IGNORE
    # Specials and padding are never targets and are never changed.
    assert not chosen[special].any()
    np.testing.assert_array_equal(inputs[special], ids[special])
    np.testing.assert_array_equal(inputs[~chosen], ids[~chosen])
    np.testing.assert_array_equal(labels[chosen], ids[chosen])

    ordinary = int((~special).sum())  # about 125k positions
    assert chosen.sum() / ordinary == pytest.approx(0.15, abs=0.004)
    masked = chosen & (inputs == MASK_ID)
    kept = chosen & (inputs == ids)
    replaced = chosen & ~masked & ~kept
    n = chosen.sum()
    assert masked.sum() / n == pytest.approx(0.8, abs=0.01)
    assert replaced.sum() / n == pytest.approx(0.1, abs=0.01)
    assert kept.sum() / n == pytest.approx(0.1, abs=0.01)
    # Random replacements are ordinary words, spread over the vocabulary.
    assert inputs[replaced].min() >= N_SPECIAL and inputs[replaced].max() < VOCAB
    assert len(np.unique(inputs[replaced])) > 0.8 * (VOCAB - N_SPECIAL)


def test_masking_follows_the_configured_shares() -> None:
    ids = np.random.default_rng(0).integers(N_SPECIAL, VOCAB, size=(200, 400))
    inputs, labels = mask_tokens(ids, np.random.default_rng(2), VOCAB, 0.3, 0.5, 0.0)
    chosen = labels != IGNORE
    assert chosen.mean() == pytest.approx(0.3, abs=0.005)
    assert (inputs[chosen] == MASK_ID).mean() == pytest.approx(0.5, abs=0.01)
    assert (inputs[chosen] == ids[chosen]).mean() == pytest.approx(0.5, abs=0.01)
    # The same generator state gives the same masks.
    again = mask_tokens(ids, np.random.default_rng(2), VOCAB, 0.3, 0.5, 0.0)
    np.testing.assert_array_equal(again[0], inputs)


def test_pack_lays_out_cls_sep_and_segments() -> None:
    ids, segments, lengths = pack([np.array([7, 8, 9]), np.array([5])], [np.array([6, 6]), None])
    assert lengths.tolist() == [8, 3]
    assert ids.tolist() == [
        [CLS_ID, 7, 8, 9, SEP_ID, 6, 6, SEP_ID],
        [CLS_ID, 5, SEP_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
    ]
    assert segments.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [0] * 8]
    assert padding_mask(lengths, 8).sum(1).tolist() == [8, 3]


def small_model(seed: int = 0, **kw: object) -> MaskedLM:
    config = EncoderConfig(vocab_size=50, width=16, layers=2, heads=4, ffn=32, max_len=24, **kw)
    return MaskedLM(config, seed=seed)


def test_a_padded_batch_gives_the_outputs_of_the_unpadded_sequences() -> None:
    model = small_model().eval()
    rng = np.random.default_rng(0)
    first = [rng.integers(N_SPECIAL, 50, n) for n in (3, 11, 7, 1)]
    second = [None, rng.integers(N_SPECIAL, 50, 4), None, rng.integers(N_SPECIAL, 50, 2)]
    ids, segments, lengths = pack(first, second)
    mask = torch.from_numpy(padding_mask(lengths, ids.shape[1]))
    ids_t, seg_t = torch.from_numpy(ids), torch.from_numpy(segments)
    with torch.no_grad():
        batch = model.encode(ids_t, seg_t, mask)
        # What is at the padded positions does not matter either.
        scrambled = ids_t.clone()
        scrambled[~mask] = torch.from_numpy(rng.integers(N_SPECIAL, 50, int((~mask).sum())))
        again = model.encode(scrambled, seg_t, mask)
        for row, n in enumerate(lengths):
            alone = model.encode(ids_t[row : row + 1, :n], seg_t[row : row + 1, :n], None)
            torch.testing.assert_close(batch[row, :n], alone[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(again[row, :n], alone[0], atol=1e-5, rtol=0)
            for layer in (0, 1):
                inner = model.encode(
                    ids_t[row : row + 1, :n], seg_t[row : row + 1, :n], None, layer
                )
                padded = model.encode(ids_t, seg_t, mask, layer)[row, :n]
                torch.testing.assert_close(padded, inner[0], atol=1e-5, rtol=0)
    assert batch.shape == (4, ids.shape[1], 16)


def test_layers_and_segments_matter() -> None:
    model = small_model().eval()
    ids = torch.tensor([[CLS_ID, 7, 8, SEP_ID, 9, SEP_ID]])
    seg = torch.tensor([[0, 0, 0, 0, 1, 1]])
    with torch.no_grad():
        last = model.encode(ids, seg, None)
        torch.testing.assert_close(model.encode(ids, seg, None, layer=-1), last)
        torch.testing.assert_close(model.encode(ids, seg, None, layer=2), last)
        states = model.hidden_states(ids, seg, None)
        torch.testing.assert_close(
            model.encode(ids, seg, None, layer=0), model.final_norm(states[0])
        )
        assert not torch.allclose(model.encode(ids, seg, None, layer=1), last)
        assert not torch.allclose(model.encode(ids, torch.zeros_like(seg), None), last)
    with pytest.raises(ValueError, match="layer"):
        model.encode(ids, seg, None, layer=3)
    with pytest.raises(ValueError, match="max_len"):
        model.encode(torch.full((1, 25), 7), torch.zeros(1, 25, dtype=torch.long), None)


def test_loss_is_the_cross_entropy_of_the_targets_only() -> None:
    model = small_model().eval()
    ids = torch.tensor(
        [[CLS_ID, 7, MASK_ID, 9, SEP_ID, PAD_ID], [CLS_ID, MASK_ID, 8, SEP_ID, 0, 0]]
    )
    mask = ids != PAD_ID
    seg = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    labels[0, 2], labels[1, 1] = 12, 30
    with torch.no_grad():
        loss = model(ids, seg, mask, labels)
        logits = model.logits(model.encode(ids, seg, mask))
        expected = F.cross_entropy(logits[[0, 1], [2, 1]], torch.tensor([12, 30]))
        torch.testing.assert_close(loss, expected)
        # No target: a zero loss that still touches every parameter.
        empty = model(ids, seg, mask, torch.full_like(ids, IGNORE))
    assert empty.item() == 0.0
    model.train()
    model(ids, seg, mask, torch.full_like(ids, IGNORE)).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tied_and_untied_output_layers() -> None:
    tied, untied = small_model(), small_model(tie_output=False)
    names = {n for n, _ in untied.named_parameters()} - {n for n, _ in tied.named_parameters()}
    assert names == {"output.weight"}
    h = torch.randn(3, 16)
    expected = tied.head_norm(F.gelu(tied.head_dense(h))) @ tied.token.weight.T
    torch.testing.assert_close(tied.logits(h), expected + tied.output_bias)


def test_initialisation_is_seeded_and_pad_row_is_zero() -> None:
    a, b, c = small_model(seed=3), small_model(seed=3), small_model(seed=4)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q), name
        if p.ndim >= 2:
            assert not torch.equal(p, r), name
            assert p.std().item() == pytest.approx(0.02, rel=0.3)
    assert torch.count_nonzero(a.token.weight[PAD_ID]) == 0
    norm = a.layers[0].attention_norm
    assert torch.equal(norm.weight, torch.ones(16)) and torch.count_nonzero(norm.bias) == 0


def test_weight_decay_only_on_matrices() -> None:
    model = small_model()
    decay, plain = decay_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in plain["params"]}
    assert decay["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert {"token.weight", "position.weight", "segment.weight", "layers.0.qkv.weight"} <= decayed
    assert {"embedding_norm.weight", "layers.1.ffn_norm.bias", "output_bias"} <= undecayed
    assert not any(n.endswith("bias") or "norm" in n for n in decayed)
    assert decayed | undecayed == set(names.values())


def test_encoder_config_round_trip_and_checks() -> None:
    config = EncoderConfig.from_mlm(MLMConfig(width=64, heads=8, layers=3), vocab_size=100)
    assert EncoderConfig.from_dict(config.to_dict()) == config
    assert (config.width, config.heads, config.layers) == (64, 8, 3)
    with pytest.raises(ValueError, match="unknown"):
        EncoderConfig.from_dict({**config.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="special"):
        EncoderConfig(vocab_size=N_SPECIAL)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 100, "heads": 3}, "multiple of heads"),
        ({"mask_prob": 0.0}, "mask_prob"),
        ({"mask_token_prob": 0.8, "random_token_prob": 0.3}, "random_token_prob"),
        ({"max_tokens": 64, "max_len": 128}, "max_tokens"),
        ({"heldout": 1.0}, "heldout"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"adam_betas": (0.9,)}, "adam_betas"),
    ],
)
def test_mlm_config_is_validated(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MLMConfig(**overrides)


def test_train_config_accepts_mlm() -> None:
    config = TrainConfig(model="mlm", options=MLMConfig(layers=1))
    assert config.options.layers == 1
    with pytest.raises(ConfigError, match="MLMConfig"):
        TrainConfig(model="sgns", options=MLMConfig())
    with pytest.raises(ConfigError, match="train.model"):
        TrainConfig(model="bert")
