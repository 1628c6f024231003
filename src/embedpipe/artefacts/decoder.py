"""Causal-LM artefacts: the decoder beside the input embedding matrix, `encode` and `generate`.

A clm artefact is a language-model artefact (`contextual`: `encoder.safetensors` and
`encoder.json` beside the vectors, format "embedpipe-clm-decoder/1"); `embedpipe.load(...)`
returns a `CausalEmbeddings` for it. `encode` gives per-token vectors that each depend on
the token and those before it only; `generate` continues a prompt, greedily by default, for
a quick look at what the model learnt. Texts are read as the model was trained: `[CLS]`
first, then the tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from embedpipe.artefacts.contextual import LanguageModelEmbeddings, write_model_files
from embedpipe.artefacts.encoder import Encoded
from embedpipe.schemas import CLS, SPECIAL_TOKENS

if TYPE_CHECKING:
    from torch import nn

    from embedpipe.train.clm import CausalLM, DecoderConfig

FORMAT = "embedpipe-clm-decoder/1"
BOS_ID = SPECIAL_TOKENS.index(CLS)
Pool = Literal["last", "mean"]


class CausalEmbeddings(LanguageModelEmbeddings):
    """The input embedding matrix of a causal LM (an `Embeddings`) and its decoder."""

    format = FORMAT
    state_key = "decoder"
    framing = 1  # [CLS] tokens

    @classmethod
    def architecture_class(cls) -> type[DecoderConfig]:
        from embedpipe.train.architecture import DecoderConfig

        return DecoderConfig

    @classmethod
    def model_class(cls) -> type[nn.Module]:
        from embedpipe.train.clm import CausalLM

        return CausalLM

    def to_torch_decoder(self, trainable: bool = True) -> CausalLM:
        """A new `CausalLM` holding a copy of the artefact's weights (for fine-tuning)."""
        return self.to_torch_model(trainable)  # type: ignore[return-value]

    def pack_ids(self, ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(batch, lengths) of `[CLS] text` rows, right-padded with [PAD] (= 0), which no real
        position reads."""
        lengths = np.array([1 + len(i) for i in ids], dtype=np.int64)
        batch = np.zeros((len(ids), int(lengths.max(initial=1))), np.int64)
        batch[:, 0] = BOS_ID
        for row, text in enumerate(ids):
            batch[row, 1 : 1 + len(text)] = text
        return batch, lengths

    def encode(
        self,
        texts: str | Sequence[str],
        layer: int | None = None,
        pool: Pool = "last",
        batch_size: int = 64,
    ) -> Encoded:
        """Contextual vectors of texts: per token, and pooled per text.

        Each text is read alone as `[CLS] tokens` (cut to the decoder's max_len); token t's
        vector depends on tokens 0..t only. `layer`: 0 is the embedding layer, k the output
        of layer k, None or -1 the last; all pass through the final LayerNorm. `pool`:
        "last" (the last token's vector, which has read the whole text) or "mean" (the mean
        of the token vectors); a text with no tokens gets the [CLS] position's vector.
        """
        import torch

        from embedpipe.train.transformer import layer_index

        if pool not in ("last", "mean"):
            raise ValueError(f"pool must be 'last' or 'mean', got {pool!r}")
        index = layer_index(layer, self.layers)
        tokens, ids = self.encoded_tokens(texts)
        vectors: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * len(ids)
        pooled = np.zeros((len(ids), self.dim), dtype=np.float32)
        order = np.argsort([len(i) for i in ids], kind="stable")
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch, _ = self.pack_ids([ids[r] for r in rows])
                out = self.model.encode(torch.from_numpy(batch), index).numpy()
                for j, r in enumerate(rows):
                    n = len(ids[r])
                    vectors[r] = out[j, 1 : 1 + n].copy()
                    pooled[r] = out[j, n] if pool == "last" or n == 0 else out[j, 1 : 1 + n].mean(0)
        return Encoded(tokens, vectors, pooled, index, pool)

    def generate(
        self, prompt: str, n: int, temperature: float = 0.0, seed: int | None = None
    ) -> str:
        """The `n` tokens the model writes after `prompt`, as text.

        temperature 0 (the default): the most likely token each time (greedy, deterministic);
        above 0: drawn from softmax(logits / temperature), the same for the same `seed`.
        Special tokens are never written. Past max_len, the model reads [CLS] and the
        newest max_len - 1 tokens.
        """
        import torch

        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        tokens = self.tokenize([prompt])[0]
        context = self.token_ids(tokens, max_tokens=len(tokens))
        window = self.architecture().max_len - 1
        generator = torch.Generator()
        if seed is None:
            generator.seed()  # a fresh seed each call
        else:
            generator.manual_seed(seed)
        written: list[int] = []
        with torch.no_grad():
            for _ in range(n):
                ids = torch.tensor([[BOS_ID, *context[-window:]]])
                logits = self.model.logits(self.model.encode(ids)[0, -1]).float()
                logits[: len(SPECIAL_TOKENS)] = -torch.inf
                if temperature == 0:
                    token = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / temperature, dim=0)
                    token = int(torch.multinomial(probs, 1, generator=generator))
                context.append(token)
                written.append(token)
        return self.detokenize([self.vocab[i] for i in written])

    def detokenize(self, tokens: list[str]) -> str:
        """Text of tokens: SentencePiece pieces decoded, words joined by spaces."""
        if self.tokenizer_model is None:
            return " ".join(tokens)
        self.pieces("")  # loads the processor once
        return str(self._processor.decode_pieces(tokens))


def write_decoder_files(train_dir: Path, summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """encoder.safetensors and encoder.json of a finished clm run (`write_model_files`)."""
    return write_model_files(train_dir, summary, out, CausalEmbeddings)
