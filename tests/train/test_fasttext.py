"""Subword skip-gram: fastText's n-gram hashing, the kernel against autograd and against
a plain loop, training, resume, the config section and a real 2-rank run."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from embedpipe import schemas as S
from embedpipe.config import ConfigError, TrainConfig, load_config
from embedpipe.text.subwords import word_ngrams
from embedpipe.train.checkpoint import complete_checkpoints, latest_checkpoint, load_checkpoint
from embedpipe.train.data import rank_chunks
from embedpipe.train.distributed import Cluster
from embedpipe.train.loop import SUMMARY, train
from embedpipe.train.registry import FastTextConfig, Word2VecConfig, get_model
from embedpipe.train.specs.fasttext import FastTextRun
from embedpipe.train.specs.word2vec import SkipGramRun, iter_batches
from embedpipe.train.subwords import SubwordIndex, SubwordSkipGram, reference_loss
from embedpipe.train.windows import SpanBatch, alias_table, noise_distribution, noise_table
from embedpipe.workdir import Workdir

SPECIALS = len(S.SPECIAL_TOKENS)


def fnv1a_fasttext(text: str) -> int:
    """fastText's Dictionary::hash, from its definition: 32-bit FNV-1a over the UTF-8 bytes,
    each byte read as a signed char and converted to uint32 (sign-extended)."""
    h = 2166136261
    for byte in text.encode("utf-8"):
        signed = int.from_bytes(bytes([byte]), "little", signed=True)
        h ^= signed % 2**32
        h = h * 16777619 % 2**32
    return h


def expected_ngrams(word: str, minn: int, maxn: int, bucket: int) -> list[int]:
    """Buckets of `<word>`'s n-grams by the paper's definition, over code points: by start,
    then by length; fastText skips a lone `<` or `>`."""
    wrapped = f"<{word}>"
    out = []
    for i in range(len(wrapped)):
        for n in range(minn, maxn + 1):
            if i + n > len(wrapped) or (n == 1 and (i == 0 or i + n == len(wrapped))):
                continue
            out.append(fnv1a_fasttext(wrapped[i : i + n]) % bucket)
    return out


WORDS = ["where", "a", "naïve", "café", "日本語", "straße", "aaaa", "x" * 30]


@pytest.mark.parametrize(("minn", "maxn", "bucket"), [(3, 6, 2_000_000), (1, 3, 97), (2, 5, 10007)])
def test_ngram_buckets_are_fasttexts(minn: int, maxn: int, bucket: int) -> None:
    for word in WORDS:
        assert word_ngrams(word, minn, maxn, bucket).tolist() == expected_ngrams(
            word, minn, maxn, bucket
        ), word


def test_ngram_buckets_equal_the_fasttext_tool() -> None:
    """`Model.get_subwords` of fastText 0.9.2 (fasttext-wheel, bucket 10007, minn 2,
    maxn 5), less nwords, for words it had not seen."""
    assert word_ngrams("café", 2, 5, 10007).tolist() == [
        5144, 428, 5515, 3633, 5289, 3846, 6252, 7902, 3060, 3078, 3784, 6767, 5302, 5267,
    ]  # fmt: skip
    assert word_ngrams("naïve", 2, 5, 10007).tolist() == [
        7497, 46, 7947, 5102, 9817, 7429, 1637, 5149, 3960, 2751, 9556, 9728, 5684, 2862,
        6719, 8254, 2722, 5565,
    ]  # fmt: skip
    assert word_ngrams("日本語", 2, 5, 10007).tolist() == [
        1026, 6939, 4531, 529, 4380, 85, 3054, 5280, 8246, 6848,
    ]  # fmt: skip


def test_compiled_index_equals_the_python_hashing() -> None:
    """Training's numba-compiled index and the loader's plain-Python hashing: same ids."""
    tokens = [*S.SPECIAL_TOKENS, *WORDS, "dog", "dogs"]
    for minn, maxn, bucket in ((3, 6, 1000), (1, 4, 31)):
        index = SubwordIndex.build(tokens, minn, maxn, bucket)
        assert len(index.offsets) == len(tokens) + 1
        for w, token in enumerate(tokens):
            rows = index.rows[index.offsets[w] : index.offsets[w + 1]]
            assert rows[0] == w  # the word's own row first
            if w < SPECIALS:
                assert len(rows) == 1  # special tokens get no n-grams
                continue
            expected = word_ngrams(token, minn, maxn, bucket) + len(tokens)
            np.testing.assert_array_equal(rows[1:], expected)
        both = index.words(np.array([SPECIALS + 1, SPECIALS]))
        np.testing.assert_array_equal(
            both,
            np.concatenate(
                [
                    index.rows[index.offsets[w] : index.offsets[w + 1]]
                    for w in (SPECIALS + 1, SPECIALS)
                ]
            ),
        )


VOCAB, BUCKET = 30, 40


def tokens() -> list[str]:
    return [*S.SPECIAL_TOKENS, *(f"{c}{c}x{i}" for i, c in enumerate("abcdefghijklmnopqrstuvwxy"))]


def model_fixture(seed: int = 0) -> SubwordSkipGram:
    """A model over the step fixture's 30 ids, with random output rows."""
    index = SubwordIndex.build(tokens(), 2, 4, BUCKET)
    model = SubwordSkipGram(index, BUCKET, 6, seed)
    with torch.no_grad():
        model.input.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed))
        model.output.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed + 1))
    return model


def centres_only(batch: SpanBatch) -> SpanBatch:
    """The fixture's batch with its special-token centres left out (never trained)."""
    keep = batch.centres >= SPECIALS
    return batch._replace(
        left=batch.left[keep], right=batch.right[keep], centre_span=batch.centre_span[keep],
        centres=batch.centres[keep], negatives=batch.negatives[keep],
    )  # fmt: skip


def test_kernel_gradient_equals_autograd_and_reaches_ngram_rows(kit: SimpleNamespace) -> None:
    batch = centres_only(kit.span_fixture(seed=1))
    model = model_fixture()
    w_in, w_out = model.input.weight.detach(), model.output.weight.detach()
    grads = (np.zeros_like(w_in.numpy()), np.zeros_like(w_out.numpy()))
    loss, pairs = model.kernel(batch, 0.0, grads)
    a, b = w_in.clone().double().requires_grad_(), w_out.clone().double().requires_grad_()
    expected = reference_loss(a, b, model.index, batch)
    expected.backward()
    assert pairs == int((batch.right - batch.left).sum())
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    np.testing.assert_allclose(grads[0], a.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[1], b.grad.numpy(), rtol=1e-4, atol=1e-5)
    ngram_rows = model.index.words(batch.centres)
    ngram_rows = np.unique(ngram_rows[ngram_rows >= VOCAB])
    assert len(ngram_rows) > 10 and np.abs(grads[0][ngram_rows]).sum(1).min() > 0
    untouched = np.setdiff1d(np.arange(VOCAB + BUCKET), model.index.words(batch.centres))
    assert np.abs(grads[0][untouched]).sum() == 0


def test_kernel_sgd_is_a_window_at_a_time(kit: SimpleNamespace) -> None:
    """lr > 0: per centre word, the subword mean predicts each context (outputs updated
    at once) and moves by that context's error before the next one, as fastText's rows
    do; the window's summed error goes to every subword row at its end."""
    batch = centres_only(kit.span_fixture(seed=2))
    model = model_fixture(seed=3)
    a, b = (
        model.input.weight.detach().double().clone(),
        model.output.weight.detach().double().clone(),
    )
    lr = 0.1
    model.kernel(batch, lr)
    for c in range(len(batch.centres)):
        if batch.right[c] == batch.left[c]:
            continue
        w = int(batch.centres[c])
        rows = torch.from_numpy(
            model.index.rows[model.index.offsets[w] : model.index.offsets[w + 1]]
        )
        h = a[rows].mean(0)
        err = torch.zeros_like(h)
        contexts = [
            j for j in range(int(batch.left[c]), int(batch.right[c]) + 1)
            if j != int(batch.centre_span[c])
        ]  # fmt: skip
        for m, j in enumerate(contexts):  # fresh draws per context: centre (c + m)'s
            target = int(batch.span[j])
            drawn = batch.negatives[(c + m) % len(batch.centres)]
            outputs = [(target, 1.0)] + [(int(n), 0.0) for n in drawn if n != target]
            moved = torch.zeros_like(h)
            for o, label in outputs:
                g = lr * (label - torch.sigmoid(h @ b[o]))
                moved += g * b[o]
                b[o] += g * h
            err += moved
            h = h + moved  # the mean of rows that each moved by `moved`
        a.index_add_(0, rows, err.expand(len(rows), -1).contiguous())
    torch.testing.assert_close(model.input.weight.detach().double(), a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.output.weight.detach().double(), b, rtol=1e-4, atol=1e-5)


def test_word_vectors_are_the_subword_means() -> None:
    model = model_fixture()
    vectors = model.word_vectors()
    table = model.input.weight.detach()
    for w in (0, SPECIALS, VOCAB - 1):
        word_rows = torch.from_numpy(
            model.index.rows[model.index.offsets[w] : model.index.offsets[w + 1]]
        )
        torch.testing.assert_close(vectors[w], table[word_rows].mean(0))
    ngrams = word_ngrams(tokens()[SPECIALS], 2, 4, BUCKET)
    expected = (table[SPECIALS] + table[VOCAB + torch.from_numpy(ngrams)].sum(0)) / (
        1 + len(ngrams)
    )
    torch.testing.assert_close(vectors[SPECIALS], expected)


CONFIG = TrainConfig(
    model="fasttext", epochs=2, checkpoint_every=4, keep_checkpoints=100, log_every=10_000,
    threads=1, options=FastTextConfig(dim=8, window=3, negatives=3, batch_size=48, bucket=200),
)  # fmt: skip


def corpus_loss(workdir: Path, config: TrainConfig, tensors: dict[str, torch.Tensor]) -> float:
    """The kernel's loss (lr 0) over every window of epoch 0, at the given tables."""
    vocab = pq.read_table(workdir / "vocab").sort_by(S.ID)
    options = config.options
    index = SubwordIndex.build(
        vocab.column(S.TOKEN).to_pylist(), options.minn, options.maxn, options.bucket
    )
    model = SubwordSkipGram(index, options.bucket, options.dim, config.seed)
    with torch.no_grad():
        model.input.weight.copy_(tensors["input"])
        model.output.weight.copy_(tensors["output"])
    keep = vocab.column(S.KEEP_PROB).to_numpy()
    noise = noise_table(vocab, options.noise_power)
    chunks = rank_chunks(str(workdir / "sequences"), 0, 1)
    grads = (np.zeros_like(tensors["input"].numpy()), np.zeros_like(tensors["output"].numpy()))
    total = 0.0
    for batches in iter_batches(options, 0, chunks, 0, 0, (0, 0), keep, noise, compact=False):
        total += sum(model.kernel(batch.data, 0.0, grads)[0] for batch in batches)
    return total


def test_training_lowers_the_loss(workdir: Path, tmp_path: Path) -> None:
    # Negatives from the vocabulary's count ** 0.75: on these random Zipf sequences the
    # loss has more to lose against them than against fastText's flatter 0.5.
    options = dataclasses.replace(CONFIG.options, noise_power=None)
    config = dataclasses.replace(CONFIG, epochs=8, checkpoint_every=0, options=options)
    summary = train(config, str(workdir), tmp_path / "out")
    assert summary["model"] == "fasttext" and summary["steps"] > 0
    tensors, _ = load_checkpoint(latest_checkpoint(tmp_path / "out" / "checkpoints"))
    vocab = len(tensors["output"])
    assert tensors["input"].shape == (vocab + 200, 8)
    initial = SubwordSkipGram(SubwordIndex.build(["x"] * vocab, 3, 6, 200), 200, 8, config.seed)
    start = {"input": initial.input.weight.detach(), "output": initial.output.weight.detach()}
    before, after = corpus_loss(workdir, config, start), corpus_loss(workdir, config, tensors)
    assert after < 0.9 * before  # random Zipf sequences: little to learn beyond frequency
    # n-gram rows were trained, and the published vectors are the trained subword means.
    moved = (tensors["input"][vocab:] - start["input"][vocab:]).abs().sum(1)
    assert int((moved > 0).sum()) > 20
    index = SubwordIndex.build(
        pq.read_table(workdir / "vocab").sort_by(S.ID).column(S.TOKEN).to_pylist(), 3, 6, 200
    )
    w = SPECIALS + 3
    rows = torch.from_numpy(index.rows[index.offsets[w] : index.offsets[w + 1]])
    torch.testing.assert_close(tensors["vectors"][w], tensors["input"][rows].mean(0))


def test_resume_after_a_kill_repeats_the_run_exactly(workdir: Path, tmp_path: Path) -> None:
    full = train(CONFIG, str(workdir), tmp_path / "full")
    expected = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))[0]
    killed_at = complete_checkpoints(tmp_path / "full" / "checkpoints")[1]
    out = tmp_path / "resumed"
    shutil.copytree(killed_at, out / "checkpoints" / killed_at.name)
    assert train(CONFIG, str(workdir), out)["steps"] == full["steps"]
    got = load_checkpoint(latest_checkpoint(out / "checkpoints"))[0]
    for name in ("input", "output", "vectors"):
        assert torch.equal(expected[name], got[name]), name


def test_negatives_follow_the_models_noise_power(workdir: Path) -> None:
    """fasttext draws from count ** 0.5 (fastText's) by default; `noise_power = None` (the
    word2vec models' default) takes the vocabulary's `noise_prob` (vocab.noise_power)."""
    vocab = pq.read_table(workdir / "vocab").sort_by(S.ID)
    counts, vocab_noise = vocab.column(S.COUNT).to_numpy(), vocab.column(S.NOISE_PROB).to_numpy()
    cpu = Cluster(0, 1, 0, torch.device("cpu"))

    def drawn(run_class: type, model: str, options: object) -> tuple[np.ndarray, np.ndarray]:
        config = dataclasses.replace(CONFIG, model=model, options=options)
        return run_class(config, Workdir(str(workdir)), cpu, None).noise

    for got, probs in (
        (drawn(FastTextRun, "fasttext", CONFIG.options), noise_distribution(counts, 0.5)),
        (
            drawn(FastTextRun, "fasttext", dataclasses.replace(CONFIG.options, noise_power=None)),
            vocab_noise,
        ),
        (drawn(SkipGramRun, "sgns", Word2VecConfig(dim=8)), vocab_noise),
        (drawn(SkipGramRun, "sgns", Word2VecConfig(dim=8, noise_power=1.0)), counts / counts.sum()),
    ):
        expected = alias_table(probs)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-9)
        np.testing.assert_array_equal(got[1], expected[1])
    assert not np.allclose(noise_distribution(counts, 0.5), vocab_noise)  # the test can fail
    with pytest.raises(ConfigError, match="noise_power must be > 0"):
        FastTextConfig(noise_power=0.0)


def test_config_section_extends_word2vecs(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[train]\nmodel = "fasttext"\n[train.fasttext]\nminn = 2\nbucket = 1000\nwindow = 3\n'
    )
    options = load_config(path).train.options
    assert isinstance(options, FastTextConfig)
    assert (options.minn, options.maxn, options.bucket, options.window) == (2, 6, 1000, 3)
    assert options.lr == 0.05 and options.noise_power == 0.5 and FastTextConfig().bucket == 500_000
    assert get_model("fasttext").vectors == "vectors"
    for bad, field in (
        ({"minn": 4, "maxn": 3}, "minn"),
        ({"bucket": 0}, "bucket"),
        ({"dim": 0}, "dim"),
    ):
        path.write_text(
            '[train]\nmodel = "fasttext"\n[train.fasttext]\n'
            + "".join(f"{k} = {v}\n" for k, v in bad.items())
        )
        with pytest.raises(ConfigError, match=field):
            load_config(path)


@pytest.mark.slow
def test_torchrun_two_ranks(workdir: Path, tmp_path: Path) -> None:
    """Two gloo ranks exchange word and n-gram rows and end with identical tables
    (`RowSync.finish` compares a checksum across ranks, or the run fails)."""
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "embedpipe.train", "--set", f"workdir={workdir}", "--set", "train.epochs=2",
        "--set", "train.model=fasttext", "--set", "train.fasttext.dim=8",
        "--set", "train.fasttext.bucket=300", "--set", "train.fasttext.batch_size=48",
        "--set", "train.fasttext.sync_every=100", "--set", "train.fasttext.sync_hot_rows=10",
        "--set", "train.checkpoint_every=4", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["world_size"] == 2 and summary["syncs"] > summary["steps"] // 4
    tensors, state = load_checkpoint(out / "checkpoints" / summary["checkpoint"])
    assert state["world"] == 2 and state["epoch"] == 2
    vocab = len(tensors["output"])
    initial = SubwordSkipGram(SubwordIndex.build(["x"] * vocab, 3, 6, 300), 300, 8, seed=1)
    moved = (tensors["input"] - initial.input.weight.detach()).abs().sum(1)
    assert int((moved[vocab:] > 0).sum()) > 20  # n-gram rows trained (and exchanged)
    assert torch.isfinite(tensors["vectors"]).all()
