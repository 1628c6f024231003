"""Exports for the Hugging Face libraries: `transformers` (masked LMs) and
`sentence-transformers` (static vectors). Both are optional (the `hf` extra) and imported
only inside these functions.

`export_transformers`: a masked-LM artefact as a RoBERTa-PreLayerNorm model directory
(config.json, model.safetensors, tokenizer.json and its configs), the one `transformers`
family with our layout: LayerNorm on the summed token, position and segment embeddings,
LayerNorm before attention and before the feed-forward block, one after the last layer,
exact (erf) GELU, biases on every projection, and the same masked-LM head (dense, GELU,
LayerNorm, output tied to the token embedding, its own bias). `AutoModel` then gives what
`ContextualEmbeddings.encode` gives for the same text (last_hidden_state: the vectors;
position 0: the "cls" pool; `encode(layer=k)` is hidden_states[k] through the model's final
LayerNorm, except the last, which transformers 5 gives normalised already) and
`AutoModelForMaskedLM` the training's logits. How it maps:

* positions: RoBERTa numbers real tokens from pad_id + 1 (padding gets position pad_id), so
  position row p is our row p - pad_id - 1 and max_position_embeddings is max_len + pad_id
  + 1; the rows up to pad_id are zero. A [PAD] token's own output differs (ours gave padding
  the position it sat at); every real token's is the same, as padding is masked out;
* segments: token_type_embeddings is our segment table (type_vocab_size 2; the tokenizer
  gives [CLS] a [SEP] type 0, b [SEP] type 1, as `train.mlm.pack` does);
* attention: our fused qkv projection is split into query, key and value;
* layer_norm_eps 1e-5 (torch's default, which our LayerNorms use), hidden_act "gelu";
* no pooler: `AutoModel` builds RoBERTa's tanh pooler with fresh weights (and says so);
  pool from last_hidden_state instead. The directory also holds sentence-transformers'
  files (modules.json, a "cls" Pooling), so `SentenceTransformer(out).encode(texts)` is
  `encode(texts).pooled`.

`export_sentence_transformers`: static vectors as a `StaticEmbedding` module (the mean of
the token vectors of a text, special tokens not added): `encode(["king queen"])` is the mean
of the two words' vectors; a word the artefact does not know counts as its [UNK] vector.

Ids beyond the artefact's vocabulary (SentencePiece pieces it never kept, see
`hf_tokenizer`) get copies of the [UNK] row, as the artefact reads them as [UNK].
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedpipe.artefacts.hf_tokenizer import artefact_tokenizer
from embedpipe.artefacts.metadata import artefact_metadata, stamp
from embedpipe.schemas import CLS, MASK, PAD, SEP, UNK, UNK_ID

if TYPE_CHECKING:
    import torch

    from embedpipe.artefacts.encoder import ContextualEmbeddings
    from embedpipe.artefacts.loader import Embeddings
    from embedpipe.train.mlm import EncoderConfig, MaskedLM

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, used by every norm of MaskedLM
BASE = "roberta_prelayernorm."  # the base model's prefix in RobertaPreLayerNormForMaskedLM


def export_transformers(emb: ContextualEmbeddings, out: str | os.PathLike[str]) -> Path:
    """Write masked-LM artefact `emb` as a `transformers` model directory `out`; returns it."""
    import torch
    from transformers import RobertaPreLayerNormForMaskedLM

    out = Path(out)
    architecture = emb.architecture()
    tokenizer, extra = artefact_tokenizer(emb)
    config = transformers_config(architecture, len(emb) + len(extra))
    model = RobertaPreLayerNormForMaskedLM(config)
    state = transformers_state(emb.to_torch_encoder(trainable=False), len(extra))
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.decoder.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"weights do not map: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.eval().save_pretrained(out)
    _stamp_weights(out, emb, "mlm")
    _save_tokenizer(tokenizer, out, max_length=architecture.max_len)
    _add_sentence_pooling(out)
    return out


def transformers_config(architecture: EncoderConfig, vocab_size: int) -> Any:
    """The `RobertaPreLayerNormConfig` of our encoder `architecture` (see the module)."""
    from transformers import RobertaPreLayerNormConfig

    if architecture.norm != "pre" or architecture.activation != "gelu":
        raise ValueError(
            f"only pre-LayerNorm GELU encoders map to transformers, not norm="
            f"{architecture.norm!r} activation={architecture.activation!r}"
        )
    return RobertaPreLayerNormConfig(
        vocab_size=vocab_size,
        hidden_size=architecture.width,
        num_hidden_layers=architecture.layers,
        num_attention_heads=architecture.heads,
        intermediate_size=architecture.ffn,
        hidden_act="gelu",
        hidden_dropout_prob=architecture.dropout,
        attention_probs_dropout_prob=architecture.dropout,
        max_position_embeddings=architecture.max_len + architecture.pad_id + 1,
        type_vocab_size=architecture.segments,
        layer_norm_eps=LAYER_NORM_EPS,
        pad_token_id=architecture.pad_id,
        bos_token_id=architecture.cls_id,
        eos_token_id=architecture.sep_id,
        tie_word_embeddings=architecture.tie_output,
        architectures=["RobertaPreLayerNormForMaskedLM"],
    )


def transformers_state(model: MaskedLM, extra: int) -> dict[str, torch.Tensor]:
    """The weights of `model` under RobertaPreLayerNormForMaskedLM's names; `extra` more
    vocabulary rows, copies of [UNK]'s, after the artefact's."""
    import torch

    config = model.config
    ours = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    def vocab_rows(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t[UNK_ID : UNK_ID + 1].expand(extra, *t.shape[1:])])

    offset = torch.zeros(config.pad_id + 1, config.width)
    state = {
        "embeddings.word_embeddings.weight": vocab_rows(ours["token.weight"]),
        "embeddings.position_embeddings.weight": torch.cat([offset, ours["position.weight"]]),
        "embeddings.token_type_embeddings.weight": ours["segment.weight"],
    }
    pairs = [("embeddings.LayerNorm", "embedding_norm"), ("LayerNorm", "final_norm")]
    for i in range(config.layers):
        theirs, mine = f"encoder.layer.{i}.", f"layers.{i}."
        for part, qkv in zip(("query", "key", "value"), range(3), strict=True):
            for kind in ("weight", "bias"):
                block = ours[f"{mine}qkv.{kind}"].chunk(3)[qkv]
                state[f"{theirs}attention.self.{part}.{kind}"] = block.clone()
        pairs += [
            (f"{theirs}attention.LayerNorm", f"{mine}attention_norm"),
            (f"{theirs}attention.output.dense", f"{mine}attention_out"),
            (f"{theirs}intermediate.LayerNorm", f"{mine}ffn_norm"),
            (f"{theirs}intermediate.dense", f"{mine}ffn_in"),
            (f"{theirs}output.dense", f"{mine}ffn_out"),
        ]
    for theirs, mine in pairs:
        for kind in ("weight", "bias"):
            state[f"{theirs}.{kind}"] = ours[f"{mine}.{kind}"]
    head = {
        "lm_head.dense.weight": ours["head_dense.weight"],
        "lm_head.dense.bias": ours["head_dense.bias"],
        "lm_head.layer_norm.weight": ours["head_norm.weight"],
        "lm_head.layer_norm.bias": ours["head_norm.bias"],
        "lm_head.bias": vocab_rows(ours["output_bias"]),
        # transformers ties decoder.bias to lm_head.bias only with tied embeddings: set both
        "lm_head.decoder.bias": vocab_rows(ours["output_bias"]),
    }
    if not config.tie_output:
        head["lm_head.decoder.weight"] = vocab_rows(ours["output.weight"])
    return {BASE + k: v for k, v in state.items()} | head


def export_sentence_transformers(emb: Embeddings, out: str | os.PathLike[str]) -> Path:
    """Write the vectors of `emb` as a `sentence-transformers` model directory `out` holding
    one `StaticEmbedding` module (mean of the token vectors); returns `out`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    out = Path(out)
    tokenizer, extra = artefact_tokenizer(emb, pair_template=False)
    if UNK not in emb.key_to_index:
        raise ValueError(f"{emb.path or 'the vocabulary'} lacks {UNK}: unknown words have no row")
    unk = emb.vectors[emb.key_to_index[UNK]]
    weights = np.vstack([emb.vectors, np.tile(unk, (len(extra), 1))]).astype(np.float32)
    module = StaticEmbedding(tokenizer, embedding_weights=weights)
    SentenceTransformer(modules=[module], device="cpu").save(str(out))
    _stamp_weights(out, emb, "static")
    return out


def _stamp_weights(out: Path, emb: Embeddings, fallback_kind: str) -> None:
    """Add the artefact's metadata (`artefacts.metadata`) to every safetensors file in `out`."""
    manifest = emb.manifest
    name = manifest.name if manifest is not None else "embeddings"
    kind = manifest.model.kind if manifest is not None and manifest.model else fallback_kind
    meta = artefact_metadata(name, kind, emb.dim, len(emb), emb.tokenizer)
    for path in sorted(out.rglob("*.safetensors")):
        stamp(path, path, {"format": "pt", **meta})


def _add_sentence_pooling(out: Path) -> None:
    """The sentence-transformers files of model directory `out` (modules.json, the pooling
    config), so `SentenceTransformer(out).encode` gives the [CLS] vector, as `encode()`'s
    default pool does; written by the library into a scratch folder, only its configs kept
    (its copy of the weights would lack the masked-LM head)."""
    import shutil
    import tempfile

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    encoder = Transformer(str(out))
    pooling = Pooling(encoder.get_embedding_dimension(), pooling_mode="cls")
    with tempfile.TemporaryDirectory() as tmp:
        SentenceTransformer(modules=[encoder, pooling], device="cpu").save(tmp)
        for path in sorted(Path(tmp).rglob("*")):
            target = out / path.relative_to(tmp)
            if path.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)


def _save_tokenizer(tokenizer: Any, out: Path, max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json and the special tokens, as transformers saves
    them, so `AutoTokenizer.from_pretrained(out)` loads this very tokenizer."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_length, unk_token=UNK,
        pad_token=PAD, cls_token=CLS, sep_token=SEP, mask_token=MASK,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )  # fmt: skip
    fast.save_pretrained(str(out))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # not RoBERTa's byte-level BPE
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
