"""The biLM: no leakage in either direction, padding, packing, the layer mix, tying, and a
tiny run through the loop whose held-out perplexity beats the unigram model."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from embedpipe.config import ConfigError, TrainConfig, load_config
from embedpipe.train.bilm import (
    BOS_ID,
    EOS_ID,
    BidirectionalConfig,
    BiLM,
    ScalarMix,
    bilm_pack,
    reverse_padded,
    scalar_mix,
)
from embedpipe.train.buckets import chunk_batches
from embedpipe.train.checkpoint import latest_checkpoint, load_checkpoint
from embedpipe.train.loop import train
from embedpipe.train.registry import BiLMConfig
from embedpipe.train.transformer import IGNORE, N_SPECIAL, decay_groups
from embedpipe.workdir import METRICS

HERE = Path(__file__).resolve().parent
V = 30


def load_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlm_corpus", HERE / "mlm_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlm_corpus"] = module
    spec.loader.exec_module(module)
    return module


corpus = load_helper()


def model(**overrides: object) -> BiLM:
    settings = {"width": 8, "hidden": 12, "layers": 2, "max_len": 16, "dropout": 0.0}
    return BiLM(BidirectionalConfig(V, **{**settings, **overrides}), seed=3).eval()  # type: ignore[arg-type]


def tensors(pieces: list[list[int]]) -> tuple[torch.Tensor, ...]:
    ids, labels, lengths = bilm_pack([np.array(p) for p in pieces])
    return torch.from_numpy(ids), torch.from_numpy(lengths), torch.from_numpy(labels)


def test_pack_frames_with_cls_and_sep_and_labels_ordinary_tokens() -> None:
    ids, lengths, labels = tensors([[7, 1, 9], [8]])
    assert ids.tolist() == [[BOS_ID, 7, 1, 9, EOS_ID], [BOS_ID, 8, EOS_ID, 0, 0]]
    assert lengths.tolist() == [5, 3]
    assert labels.tolist() == [[IGNORE, 7, IGNORE, 9, IGNORE], [IGNORE, 8] + [IGNORE] * 3]


def test_reverse_padded_reverses_each_row_within_its_length() -> None:
    x = torch.arange(10).view(2, 5)
    out = reverse_padded(x, torch.tensor([5, 3]))
    assert out.tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]
    assert torch.equal(reverse_padded(out, torch.tensor([5, 3])), x)


@pytest.mark.parametrize("hidden", [8, 12])  # without and with the LSTM projection
def test_no_direction_sees_the_tokens_it_predicts(hidden: int) -> None:
    bilm = model(hidden=hidden)
    ids, lengths, _ = tensors([[7, 8, 9, 10, 11, 12]])
    changed = ids.clone()
    t = 3
    with torch.no_grad():
        forward, backward = bilm.directions(ids, lengths)
        later = changed.clone()
        later[0, t + 1 :] = torch.tensor([20, 21, 22, 23])  # tokens after t (and [SEP])
        f_later, b_later = bilm.directions(later, lengths)
        earlier = changed.clone()
        earlier[0, :t] = torch.tensor([25, 26, 27])  # tokens before t (and [CLS])
        f_earlier, b_earlier = bilm.directions(earlier, lengths)
    for k in range(1, 3):
        assert torch.equal(f_later[k][0, : t + 1], forward[k][0, : t + 1])  # forward: no future
        assert not torch.allclose(f_earlier[k][0, t], forward[k][0, t])  # ... but the past
        assert torch.equal(b_earlier[k][0, t:], backward[k][0, t:])  # backward: no past
        assert not torch.allclose(b_later[k][0, t], backward[k][0, t])  # ... but the future


def test_padding_does_not_change_a_sequence() -> None:
    bilm = model()
    alone = tensors([[7, 8, 9]])
    batched = tensors([[7, 8, 9], [10, 11, 12, 13, 14, 15, 16]])
    with torch.no_grad():
        states = bilm.layer_states(*alone[:2])
        padded = bilm.layer_states(*batched[:2])
        f, b = bilm.direction_losses(*batched)
        f1, b1 = bilm.direction_losses(*alone)
        f2, b2 = bilm.direction_losses(*tensors([[10, 11, 12, 13, 14, 15, 16]]))
        loss = bilm(*alone)
    torch.testing.assert_close(padded[:, 0, :5], states[:, 0], atol=1e-6, rtol=0)
    assert not torch.allclose(padded[:, 0, 2], padded[:, 1, 2])
    # A batch's loss is the mean over its targets: 3 from the first row, 7 from the second.
    torch.testing.assert_close(f, (f1 * 3 + f2 * 7) / 10)
    torch.testing.assert_close(b, (b1 * 3 + b2 * 7) / 10)
    torch.testing.assert_close(loss, (f1 + b1) / 2)
    assert not torch.allclose(f1, b1)


def test_layers_are_elmos_and_the_mix_is_softmax_times_gamma() -> None:
    bilm = model()
    ids, lengths, _ = tensors([[7, 8, 9, 10]])
    with torch.no_grad():
        states = bilm.layer_states(ids, lengths)
        forward, backward = bilm.directions(ids, lengths)
    assert states.shape == (3, 1, 6, 16)
    x = bilm.token(ids)
    torch.testing.assert_close(states[0], torch.cat([x, x], dim=-1))
    torch.testing.assert_close(states[2], torch.cat([forward[2], backward[2]], dim=-1))
    torch.testing.assert_close(scalar_mix(states), states.mean(0))
    weights = torch.tensor([0.5, -1.0, 2.0])
    p = torch.softmax(weights, 0)
    expected = 0.7 * (p[0] * states[0] + p[1] * states[1] + p[2] * states[2])
    torch.testing.assert_close(scalar_mix(states, weights, 0.7), expected)
    with torch.no_grad():
        mixed = bilm.layer_mix(ids, lengths, [0.5, -1.0, 2.0], 0.7)
        torch.testing.assert_close(mixed, expected)
        torch.testing.assert_close(ScalarMix(3)(states), states.mean(0))
    with pytest.raises(ValueError, match="3 numbers"):
        scalar_mix(states, [1.0, 2.0])


def test_tied_softmax_and_decay_groups() -> None:
    tied, untied = model(), model(tie_output=False)
    assert tied.output is None and untied.output is not None
    names = {n for n, _ in tied.named_parameters()}
    assert "output.weight" not in names and {"output_bias", "token.weight"} <= names
    ids, lengths, labels = tensors([[7, 8, 9]])
    for bilm in (tied, untied):
        bilm.train()(ids, lengths, labels).backward()
    unseen = N_SPECIAL + 5  # a token neither read nor predicted: a softmax row only
    assert untied.token.weight.grad is not None and tied.token.weight.grad is not None
    assert untied.token.weight.grad[unseen].abs().sum() == 0
    assert tied.token.weight.grad[unseen].abs().sum() > 0
    decay, plain = decay_groups(tied, 0.01)
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert len(decay["params"]) == 1 + 2 * 2 * 3  # embedding; per LSTM: ih, hh, projection
    with pytest.raises(ValueError, match="hidden"):
        BidirectionalConfig(V, width=16, hidden=8)


def test_config_section_and_bucket_batches() -> None:
    config = load_config(None, ["train.model=bilm", "train.bilm.dim=32", "train.bilm.hidden=64"])
    assert config.train.options == BiLMConfig(dim=32, hidden=64)
    with pytest.raises(ConfigError, match="hidden must be >= dim"):
        BiLMConfig(dim=64, hidden=32)
    with pytest.raises(ConfigError, match="heads"):
        load_config(None, ["train.model=bilm", "train.bilm.heads=2"])
    flat = (N_SPECIAL + np.arange(40) % (V - N_SPECIAL)).astype(np.int32)
    offsets = np.array([0, 3, 10, 40])
    options = BiLMConfig(max_len=12, max_tokens=36, heldout=0.0)
    batches = list(chunk_batches(flat, offsets, options, V, [1, 2]))
    rows = [row for (ids, _, _), *_ in batches for row in ids.tolist()]
    assert all(r[0] == BOS_ID and len(r) <= 12 for r in rows)
    assert sorted(t for r in rows for t in r if t >= N_SPECIAL) == sorted(flat.tolist())
    for (ids, lengths, labels), targets, tokens, slots, _ in batches:
        assert tokens == int(lengths.sum()) and slots == ids.numel() <= 36
        assert targets == int((labels != IGNORE).sum())


def test_a_tiny_run_beats_the_unigram_model(tmp_path: Path) -> None:
    workdir = corpus.write_mlm_workdir(tmp_path / "work", n_sequences=400)
    options = BiLMConfig(
        dim=16, hidden=32, max_len=20, max_tokens=200, warmup_steps=5, lr=2e-2, heldout=0.15,
        chunk_rows=100, dropout=0.0,
    )  # fmt: skip
    config = TrainConfig(
        model="bilm", epochs=6, checkpoint_every=0, log_every=20, threads=1, options=options
    )
    summary = train(config, str(workdir), tmp_path / "out")
    heldout = summary["heldout"]
    assert [h["epoch"] for h in heldout] == list(range(7))
    # Untrained: about the vocabulary (35); unigram: about 30 (words about uniform); the
    # topics allow about 5 in each direction.
    assert heldout[0]["perplexity"] > 30
    assert 25 < heldout[-1]["unigram_perplexity"] < 32
    assert heldout[-1]["perplexity"] < 0.5 * heldout[-1]["unigram_perplexity"]
    assert heldout[-1]["perplexity"] == pytest.approx(math.exp(heldout[-1]["loss"]), rel=1e-3)
    assert summary["bilm"]["width"] == 16 and summary["parameters"] > 0
    records = [json.loads(line) for line in (tmp_path / "out" / METRICS).read_text().splitlines()]
    assert len([r for r in records if "heldout_perplexity" in r]) == 7
    # The checkpoint holds the weights the artefact publishes and AdamW's state.
    tensors_, state = load_checkpoint(latest_checkpoint(tmp_path / "out" / "checkpoints"))
    assert torch.equal(tensors_["input"], tensors_["model.token.weight"])
    assert "optim.forward_layers.0.weight_ih_l0.exp_avg" in tensors_
    assert BidirectionalConfig.from_dict(state["bilm"]) == BidirectionalConfig.from_bilm(
        options, 35
    )
    resumed = train(dataclasses.replace(config), str(workdir), tmp_path / "out")
    assert resumed["heldout"] == heldout  # a finished run resumes to the same figures
