"""The causal LM (`train.model = "clm"`) on the `buckets` table: a `TransformerRun`.

Batches are `[CLS] a` examples shifted by one (`clm.causal_pack`) under the masked LM's
token budget; the loss is the next-token cross-entropy at every ordinary token. Batching,
AdamW, the schedule, checkpoints and the held-out perplexity (with its unigram reference)
are `specs.transformer`'s. Checkpoints and the summary hold the architecture under
"decoder".
"""

from __future__ import annotations

from embedpipe.train.clm import CausalLM, DecoderConfig
from embedpipe.train.specs.transformer import TransformerRun


class CausalLMRun(TransformerRun):
    """The decoder (`clm.CausalLM`) trained on this rank's bucket chunks."""

    architecture_key = "decoder"
    dim_field = "train.clm.width"

    def build(self, vocab_size: int, seed: int) -> tuple[DecoderConfig, CausalLM]:
        decoder = DecoderConfig.from_clm(self.options, vocab_size)
        return decoder, CausalLM(decoder, seed)
