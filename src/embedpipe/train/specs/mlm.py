"""The masked LM (`train.model = "mlm"`) on the `buckets` table: a `TransformerRun`.

Batches are `[CLS] a [SEP]` / `[CLS] a [SEP] b [SEP]` examples, masked BERT's way
(`mlm.mask_tokens`); the loss is the masked-LM cross-entropy at the targets. Batching,
AdamW, the schedule, checkpoints and the held-out loss are `specs.transformer`'s.
Checkpoints and the summary hold the architecture under "encoder".
"""

from __future__ import annotations

from embedpipe.train.mlm import EncoderConfig, MaskedLM
from embedpipe.train.specs.transformer import TransformerRun


class MaskedLMRun(TransformerRun):
    """The encoder (`mlm.MaskedLM`) trained on this rank's bucket chunks."""

    architecture_key = "encoder"
    dim_field = "train.mlm.width"

    def build(self, vocab_size: int, seed: int) -> tuple[EncoderConfig, MaskedLM]:
        encoder = EncoderConfig.from_mlm(self.options, vocab_size)
        return encoder, MaskedLM(encoder, seed)
