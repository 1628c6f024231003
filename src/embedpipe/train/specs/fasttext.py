"""Subword skip-gram (`train.model = "fasttext"`) on the `sequences` table.

Skip-gram's run (`word2vec.SkipGramRun`: the same window batches, schedule, Hogwild
threads and row exchange) with fastText's tables (`subwords.SubwordSkipGram`): the input
table holds the words' rows and then `bucket` n-gram rows, and a centre word is the mean
of its subword rows. The n-grams of every vocabulary word are hashed once, here, before
training starts. The tables train in place on CPU, with the compiled kernel, on every
kind of rank (GPU ranks too: the kernel is the fast path for these sparse updates).

Across ranks, `sync.RowSync` exchanges the changed rows of both tables; the hot rows,
sent at every exchange, are those of the `sync_hot_rows` most frequent words and of all
their n-gram buckets, the other rows at every `sync_rare_every`-th.

Publishing takes the checkpoint's `vectors` (each vocabulary word's subword mean, as
fastText's .vec file) and `write_subword_files` adds the n-gram table and its settings
(`artefacts.subwords`), so a loaded artefact composes words it never saw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from embedpipe import schemas as S
from embedpipe.artefacts.loader import SUBWORDS_FILE
from embedpipe.artefacts.subwords import NGRAMS_KEY, SUBWORDS_CONFIG_FILE, subwords_config
from embedpipe.config import TrainConfig
from embedpipe.train.data import rank_chunks
from embedpipe.train.distributed import Cluster, set_kernel_threads
from embedpipe.train.init import Parent, init_subwords
from embedpipe.train.loop import Resumed
from embedpipe.train.registry import FastTextConfig
from embedpipe.train.sgns import InPlaceTrainer
from embedpipe.train.specs.word2vec import SkipGramRun
from embedpipe.train.subwords import SubwordIndex, SubwordSkipGram
from embedpipe.train.sync import RowSync
from embedpipe.train.windows import SpanBatch, noise_table
from embedpipe.workdir import CHECKPOINTS, Workdir


class FastTextRun(SkipGramRun):
    """Skip-gram whose centre word is the mean of its word and n-gram rows."""

    def __init__(
        self,
        config: TrainConfig,
        workdir: Workdir,
        cluster: Cluster,
        resumed: Resumed | None,
        parent: Parent | None = None,
    ) -> None:
        options: FastTextConfig = config.options
        self.options, self.seed, self.cluster = options, config.seed, cluster
        set_kernel_threads(cluster, config.threads)
        vocab = pq.read_table(
            workdir.table_path("vocab"),
            columns=[S.ID, S.TOKEN, S.COUNT, S.KEEP_PROB, S.NOISE_PROB],
        ).sort_by(S.ID)
        self.keep_prob = vocab.column(S.KEEP_PROB).to_numpy()
        self.noise = noise_table(vocab, options.noise_power)
        sequences = workdir.require("sequences")
        self.corpus_words = self.epoch_words = sequences["counts"]["tokens"]
        table = workdir.table_path("sequences", manifest=sequences)
        self.chunks = rank_chunks(table, cluster.rank, cluster.world)
        self.index = SubwordIndex.build(
            vocab.column(S.TOKEN).to_pylist(), options.minn, options.maxn, options.bucket
        )
        self.model = SubwordSkipGram(self.index, options.bucket, options.dim, config.seed)
        if resumed is not None:
            with torch.no_grad():
                self.model.input.weight.copy_(resumed[0]["input"])
                self.model.output.weight.copy_(resumed[0]["output"])
        if parent is not None:  # n-gram rows and word rows from the artefact; output fresh
            parent.check_dim(options.dim, "train.fasttext.dim")
            settings = {"minn": options.minn, "maxn": options.maxn, "bucket": options.bucket}
            init_subwords(parent, self.model.input.weight, self.index, settings)
        self.params = [self.model.input.weight, self.model.output.weight]
        self.in_place = True  # CPU tables on every rank: SpanBatches over global ids
        self.runner = InPlaceTrainer(self.model, config.threads)  # type: ignore[arg-type]
        self.sync = None
        if cluster.world > 1:
            self.sync = RowSync(
                self.params,
                dist.new_group(backend="gloo"),  # the tables are CPU tensors
                cluster.world,
                getattr(torch, options.sync_payload),
                hot_rows=self.hot_rows(options.sync_hot_rows),
                full_every=options.sync_rare_every,
            )
            self.sync_every = options.sync_every * cluster.world
            self.sync_overlap = options.sync_overlap

    def hot_rows(self, words: int) -> list[np.ndarray | None] | None:
        """Per table, the rows sent at every exchange: those of the `words` most frequent
        words (input: with their n-gram rows); None (0 words): every row, every time."""
        if words == 0:
            return None
        vocab = len(self.keep_prob)
        frequent = np.arange(min(words, vocab))
        hot_in = np.zeros(self.params[0].shape[0], dtype=np.bool_)
        hot_in[self.index.words(frequent)] = True
        hot_out = np.zeros(vocab, dtype=np.bool_)
        hot_out[frequent] = True
        return [hot_in, hot_out]

    def mark(self, data: Any) -> None:
        """Note the rows a batch touches: its centres' subword rows (input), its context
        words and negatives (output)."""
        assert self.sync is not None and isinstance(data, SpanBatch)
        self.sync.mark(0, self.index.words(data.centres))
        self.sync.mark(1, data.span)
        self.sync.mark(1, data.negatives.reshape(-1))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "input": self.model.input.weight,
            "output": self.model.output.weight,
            "vectors": self.model.word_vectors(),
        }


def write_subword_files(train_dir: Path, summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write subwords.safetensors (the n-gram rows of the final input table) and
    subwords.json (their settings) into `out`; returns {artefact file name: path}."""
    from safetensors.numpy import save_file

    from embedpipe.train.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(train_dir / CHECKPOINTS / summary["checkpoint"])
    options = summary["config"]["fasttext"]
    vocab = tensors["output"].shape[0]
    ngrams = tensors["input"][vocab:].numpy().astype(np.float32, copy=False)
    if ngrams.shape[0] != options["bucket"]:
        raise ValueError(
            f"{train_dir}: the input table has {ngrams.shape[0]} n-gram rows, "
            f"train.fasttext.bucket is {options['bucket']}"
        )
    paths = {SUBWORDS_FILE: out / SUBWORDS_FILE, SUBWORDS_CONFIG_FILE: out / SUBWORDS_CONFIG_FILE}
    save_file({NGRAMS_KEY: np.ascontiguousarray(ngrams)}, str(paths[SUBWORDS_FILE]))
    settings = subwords_config(options["minn"], options["maxn"], options["bucket"])
    paths[SUBWORDS_CONFIG_FILE].write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return paths
