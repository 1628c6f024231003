"""The bidirectional LSTM LM (`train.model = "bilm"`) on the `buckets` table.

Batches are `[CLS] a [SEP]` examples (`bilm.bilm_pack`) under the token budget the
Transformer LMs use; the loss is the mean of the forward and backward next/previous-token
cross-entropies (`bilm.BiLM`). Batching, AdamW (decay on matrices only: LSTM and embedding
weights), the schedule, checkpoints, exact resume and the held-out perplexity (exp of the
mean of both directions' token losses) with its unigram reference are `TransformerRun`'s,
which asks nothing of its model but a token embedding and a loss. Checkpoints and the
summary hold the architecture under "bilm".
"""

from __future__ import annotations

from embedpipe.train.bilm import BidirectionalConfig, BiLM
from embedpipe.train.specs.transformer import TransformerRun


class BiLMRun(TransformerRun):
    """The biLM (`bilm.BiLM`) trained on this rank's bucket chunks."""

    architecture_key = "bilm"
    dim_field = "train.bilm.dim"

    def build(self, vocab_size: int, seed: int) -> tuple[BidirectionalConfig, BiLM]:
        architecture = BidirectionalConfig.from_bilm(self.options, vocab_size)
        return architecture, BiLM(architecture, seed)
