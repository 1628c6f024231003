"""Exports for the Hugging Face libraries: `transformers` model directories of language-model
artefacts (`export_transformers`, format "hf") and `sentence-transformers` directories of
static vectors (`export_sentence_transformers`), for the optional `hf` extra. The "hf"
directory is written without transformers (numpy, safetensors and `tokenizers`), as
`artefacts.gpt2` writes GPT-2; the static one by sentence-transformers itself.

A masked LM becomes RoBERTa-PreLayerNorm, the one `transformers` family with its layout:
LayerNorm on the summed token, position and segment embeddings, LayerNorm before attention
and before the feed-forward block, one after the last layer, exact (erf) GELU, biases on
every projection, and the same masked-LM head (dense, GELU, LayerNorm, output tied to the
token embedding or not, its own bias). `AutoModel` then gives what
`ContextualEmbeddings.encode` gives for the same text (last_hidden_state: the vectors;
position 0: the "cls" pool; `encode(layer=k)` is hidden_states[k] through the model's final
LayerNorm, except the last, which transformers 5 gives normalised already), and
`AutoModelForMaskedLM` the training's logits. How it maps:

* positions: RoBERTa numbers real tokens from pad_id + 1 (padding gets position pad_id), so
  position row p is our row p - pad_id - 1 and max_position_embeddings is max_len + pad_id
  + 1; the rows up to pad_id are zero. A [PAD] token's own output differs (ours gave padding
  the position it sat at); every real token's is the same, as padding is masked out;
* segments: token_type_embeddings is our segment table (the tokenizer gives [CLS] a [SEP]
  type 0 and b [SEP] type 1, as `train.mlm.pack` does);
* attention: our fused qkv projection is split into query, key and value;
* layer_norm_eps 1e-5 (torch's default, which our LayerNorms use), hidden_act "gelu";
* no pooler: `AutoModel` builds RoBERTa's tanh pooler with fresh weights (and says so, as
  for roberta-base); pool from last_hidden_state. The directory also holds
  sentence-transformers' files (a "cls" Pooling), so `SentenceTransformer(out).encode` is
  `encode(texts).pooled`.

A causal LM becomes GPT-2 (`artefacts.gpt2`) with the tokenizer beside it: [CLS] begins a
text, as in training, and no token types (GPT-2 would add them to the input).

Static vectors become one `StaticEmbedding` module (the mean of a text's token vectors,
special tokens not added): `encode(["king queen"])` is the mean of the two words' vectors; a
word the artefact does not know counts as its [UNK] vector.

Ids beyond the artefact's vocabulary (SentencePiece pieces it never kept, see
`hf_tokenizer`) get copies of the [UNK] row (and [UNK]'s output bias): the artefact reads
them as [UNK]. Every safetensors file written carries the artefact's metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import save_file

from embedpipe.artefacts.files import ArtefactError
from embedpipe.artefacts.hf_tokenizer import artefact_tokenizer
from embedpipe.artefacts.metadata import artefact_metadata, stamp
from embedpipe.schemas import CLS, MASK, PAD, SEP, UNK, UNK_ID

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from embedpipe.artefacts.keyed import Embeddings

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, used by every norm of our models
BASE = "roberta_prelayernorm."  # the base model's prefix in RobertaPreLayerNormForMaskedLM
# (RoBERTa name in a layer, our name in a layer): the norms and projections kept as they are.
LAYER_PARTS = (
    ("attention.LayerNorm", "attention_norm"),
    ("attention.output.dense", "attention_out"),
    ("intermediate.LayerNorm", "ffn_norm"),
    ("intermediate.dense", "ffn_in"),
    ("output.dense", "ffn_out"),
)


def export_transformers(emb: Embeddings, out: str | os.PathLike[str]) -> Path:
    """Write language-model artefact `emb` (mlm or clm) as a `transformers` model directory
    `out` with its tokenizer; returns `out`."""
    from embedpipe.artefacts.decoder import CausalEmbeddings
    from embedpipe.artefacts.encoder import ContextualEmbeddings
    from embedpipe.artefacts.gpt2 import gpt2_config, gpt2_weights

    out = Path(out)
    if isinstance(emb, ContextualEmbeddings):
        tokenizer, extra = artefact_tokenizer(emb, frame="encoder")
        config, weights = roberta_config(emb, len(extra)), roberta_weights(emb, len(extra))
        inputs = ["input_ids", "token_type_ids", "attention_mask"]
    elif isinstance(emb, CausalEmbeddings):
        tokenizer, extra = artefact_tokenizer(emb, frame="decoder")
        config, weights = gpt2_config(emb), gpt2_weights(emb)
        config["vocab_size"] = len(emb) + len(extra)
        for name in ("transformer.wte.weight", "lm_head.weight"):
            if name in weights:
                weights[name] = with_unk_rows(weights[name], len(extra))
        inputs = ["input_ids", "attention_mask"]
    else:
        raise ArtefactError(
            f"{emb.path or 'these embeddings'}: format 'hf' needs a language-model artefact "
            "(mlm or clm); export static vectors as 'sentence-transformers'"
        )
    max_len = emb.architecture().max_len
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / WEIGHTS_FILE))
    stamp(out / WEIGHTS_FILE, out / WEIGHTS_FILE, {"format": "pt", **metadata_of(emb)})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_tokenizer(tokenizer, out, max_len, inputs)
    if isinstance(emb, ContextualEmbeddings):
        write_sentence_pooling(out, emb.dim, max_len)
    return out


def with_unk_rows(table: np.ndarray, extra: int) -> np.ndarray:
    """`table` (vocabulary rows first) with `extra` copies of its [UNK] row after it."""
    return np.concatenate([table, np.repeat(table[UNK_ID : UNK_ID + 1], extra, axis=0)])


def roberta_config(emb: Embeddings, extra: int) -> dict[str, Any]:
    """RobertaPreLayerNormConfig's fields for masked-LM artefact `emb` (see the module)."""
    arch = emb.architecture()  # type: ignore[attr-defined]
    if arch.norm != "pre" or arch.activation != "gelu":
        raise ArtefactError(
            f"{emb.path}: a {arch.norm}-norm {arch.activation} encoder is not RoBERTa-PreLayerNorm"
        )
    return {
        "architectures": ["RobertaPreLayerNormForMaskedLM"],
        "model_type": "roberta-prelayernorm",
        "vocab_size": arch.vocab_size + extra,
        "hidden_size": arch.width,
        "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.heads,
        "intermediate_size": arch.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": arch.dropout,
        "attention_probs_dropout_prob": arch.dropout,
        "max_position_embeddings": arch.max_len + arch.pad_id + 1,
        "type_vocab_size": arch.segments,
        "layer_norm_eps": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "pad_token_id": arch.pad_id,
        "bos_token_id": arch.cls_id,
        "eos_token_id": arch.sep_id,
        "tie_word_embeddings": arch.tie_output,
    }


def roberta_weights(emb: Embeddings, extra: int) -> dict[str, np.ndarray]:
    """The masked LM's weights under RobertaPreLayerNormForMaskedLM's names, float32."""
    arch = emb.architecture()  # type: ignore[attr-defined]
    w = emb.encoder_weights  # type: ignore[attr-defined]
    offset = np.zeros((arch.pad_id + 1, arch.width), np.float32)
    base = {
        "embeddings.word_embeddings.weight": with_unk_rows(emb.vectors, extra),
        "embeddings.position_embeddings.weight": np.concatenate([offset, w["position.weight"]]),
        "embeddings.token_type_embeddings.weight": w["segment.weight"],
    }
    pairs = [("embeddings.LayerNorm", "embedding_norm"), ("LayerNorm", "final_norm")]
    for i in range(arch.layers):
        for kind in ("weight", "bias"):
            query, key, value = np.split(w[f"layers.{i}.qkv.{kind}"], 3)
            for part, block in (("query", query), ("key", key), ("value", value)):
                base[f"encoder.layer.{i}.attention.self.{part}.{kind}"] = block
        pairs += [(f"encoder.layer.{i}.{theirs}", f"layers.{i}.{ours}") for theirs, ours in
                  LAYER_PARTS]  # fmt: skip
    for theirs, ours in pairs:
        for kind in ("weight", "bias"):
            base[f"{theirs}.{kind}"] = w[f"{ours}.{kind}"]
    bias = with_unk_rows(w["output_bias"], extra)
    head = {
        "lm_head.dense.weight": w["head_dense.weight"],
        "lm_head.dense.bias": w["head_dense.bias"],
        "lm_head.layer_norm.weight": w["head_norm.weight"],
        "lm_head.layer_norm.bias": w["head_norm.bias"],
        "lm_head.bias": bias,
        "lm_head.decoder.bias": bias,  # tied to lm_head.bias only with tied embeddings
    }
    if not arch.tie_output:
        head["lm_head.decoder.weight"] = with_unk_rows(w["output.weight"], extra)
    weights = {BASE + k: v for k, v in base.items()} | head
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}


def export_sentence_transformers(emb: Embeddings, out: str | os.PathLike[str]) -> Path:
    """Write the vectors of `emb` as a `sentence-transformers` model directory `out` holding
    one `StaticEmbedding` module (mean of the token vectors); returns `out`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    out = Path(out)
    if UNK not in emb.key_to_index:
        raise ValueError(f"{emb.path or 'the vocabulary'} lacks {UNK}: unknown words have no row")
    tokenizer, extra = artefact_tokenizer(emb, frame=None)
    module = StaticEmbedding(tokenizer, embedding_weights=with_unk_rows(emb.vectors, len(extra)))
    SentenceTransformer(modules=[module], device="cpu").save(str(out))
    for path in sorted(out.rglob("*.safetensors")):
        stamp(path, path, metadata_of(emb))
    return out


def metadata_of(emb: Embeddings) -> dict[str, str]:
    """The artefact metadata (`artefacts.metadata`) of `emb`, from its manifest if it has one."""
    manifest = emb.manifest
    name = manifest.name if manifest is not None else "embeddings"
    kind = manifest.model.kind if manifest is not None and manifest.model else "unknown"
    return artefact_metadata(name, kind, emb.dim, len(emb), emb.tokenizer)


def write_tokenizer(tokenizer: Tokenizer, out: Path, max_len: int, input_names: list[str]) -> None:
    """tokenizer.json and tokenizer_config.json, which `AutoTokenizer` reads as a fast
    tokenizer of this very pipeline (not RoBERTa's or GPT-2's own byte-level BPE)."""
    tokenizer.save(str(out / "tokenizer.json"))
    specials = {"unk_token": UNK, "pad_token": PAD, "cls_token": CLS, "sep_token": SEP,
                "mask_token": MASK}  # fmt: skip
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "backend": "tokenizers",
        "model_max_length": max_len,
        "model_input_names": input_names,
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", specials)


def write_sentence_pooling(out: Path, dim: int, max_len: int) -> None:
    """modules.json and the configs that make model directory `out` a sentence-transformers
    model pooling the [CLS] vector (the long-standing layout, read by 2.x to 6.x)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]  # fmt: skip
    _write_json(out / "modules.json", modules)
    _write_json(
        out / "sentence_bert_config.json", {"max_seq_length": max_len, "do_lower_case": False}
    )
    pooling = {"word_embedding_dimension": dim, "pooling_mode_cls_token": True,
               "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False}  # fmt: skip
    (out / "1_Pooling").mkdir(exist_ok=True)
    _write_json(out / "1_Pooling" / "config.json", pooling)


def _write_json(path: Path, data: Mapping[str, Any] | list[Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
