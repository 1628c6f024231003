"""A clm artefact's decoder as a Hugging Face `transformers` GPT-2 directory (model only).

`CausalLM` has GPT-2's layout (token and learned position embeddings, pre-LayerNorm causal
layers with a fused qkv projection, exact GELU, a final LayerNorm, the output tied to the
token embedding), so its weights map one to one: `export_gpt2` writes `config.json` and
`model.safetensors` that `GPT2LMHeadModel.from_pretrained` reads, giving the same logits.
Linear weights are transposed into GPT-2's Conv1D (in, out) layout. Written with numpy and
safetensors only: neither torch nor transformers is needed to export.

The tokenizer is not written here: the ids are the artefact's vocabulary ids ([CLS] begins
a text, as in training); a tokenizer export belongs with the masked LM's Hugging Face one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from embedpipe.artefacts.decoder import BOS_ID, CausalEmbeddings
from embedpipe.artefacts.files import ArtefactError
from embedpipe.schemas import PAD_ID

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which CausalLM uses
# (GPT-2 name, CausalLM name, transposed): the weights of one layer.
LAYER_WEIGHTS = (
    ("ln_1.weight", "attention_norm.weight", False),
    ("ln_1.bias", "attention_norm.bias", False),
    ("attn.c_attn.weight", "qkv.weight", True),
    ("attn.c_attn.bias", "qkv.bias", False),
    ("attn.c_proj.weight", "attention_out.weight", True),
    ("attn.c_proj.bias", "attention_out.bias", False),
    ("ln_2.weight", "ffn_norm.weight", False),
    ("ln_2.bias", "ffn_norm.bias", False),
    ("mlp.c_fc.weight", "ffn_in.weight", True),
    ("mlp.c_fc.bias", "ffn_in.bias", False),
    ("mlp.c_proj.weight", "ffn_out.weight", True),
    ("mlp.c_proj.bias", "ffn_out.bias", False),
)


def gpt2_config(emb: CausalEmbeddings) -> dict[str, object]:
    """GPT2Config's fields for the artefact's decoder."""
    arch = emb.architecture()
    if arch.norm != "pre" or arch.activation != "gelu":
        raise ArtefactError(
            f"{emb.path}: a {arch.norm}-norm {arch.activation} decoder is not GPT-2"
        )
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": arch.vocab_size,
        "n_positions": arch.max_len,
        "n_embd": arch.width,
        "n_layer": arch.layers,
        "n_head": arch.heads,
        "n_inner": arch.ffn,
        "activation_function": "gelu",
        "resid_pdrop": arch.dropout,
        "embd_pdrop": arch.dropout,
        "attn_pdrop": arch.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "bos_token_id": BOS_ID,
        "eos_token_id": None,  # the model never learnt to end a text
        "pad_token_id": PAD_ID,
        "tie_word_embeddings": arch.tie_output,
    }


def gpt2_weights(emb: CausalEmbeddings) -> dict[str, np.ndarray]:
    """The decoder's weights under GPT2LMHeadModel's names, float32, contiguous."""
    w = emb.encoder_weights
    out = {"transformer.wte.weight": emb.vectors, "transformer.wpe.weight": w["position.weight"]}
    for i in range(emb.layers):
        for name, ours, transposed in LAYER_WEIGHTS:
            value = w[f"layers.{i}.{ours}"]
            out[f"transformer.h.{i}.{name}"] = value.T if transposed else value
    out["transformer.ln_f.weight"] = w["final_norm.weight"]
    out["transformer.ln_f.bias"] = w["final_norm.bias"]
    if not emb.architecture().tie_output:
        out["lm_head.weight"] = w["output.weight"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def export_gpt2(emb: CausalEmbeddings, out: str | Path) -> Path:
    """Write the decoder of `emb` as a GPT-2 directory at `out` (created); returns it."""
    if not isinstance(emb, CausalEmbeddings):
        raise ArtefactError(f"{emb.path}: only a clm artefact exports as GPT-2")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(gpt2_weights(emb), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(gpt2_config(emb), indent=2, sort_keys=True) + "\n")
    return out
