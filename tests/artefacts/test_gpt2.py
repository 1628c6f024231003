"""A clm artefact exported as a transformers GPT-2 directory gives the decoder's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file as save_numpy

from embedpipe import schemas as S
from embedpipe.artefacts import ArtefactError, ArtefactStore, Embeddings, load
from embedpipe.artefacts.decoder import CausalEmbeddings, write_decoder_files
from embedpipe.artefacts.gpt2 import CONFIG_FILE, export_gpt2
from embedpipe.train.checkpoint import save_checkpoint
from embedpipe.train.clm import BOS_ID, CausalLM, DecoderConfig

transformers = pytest.importorskip("transformers")
TOKENS = [*S.SPECIAL_TOKENS, *(f"w{i}" for i in range(40))]


def decoder_artefact(tmp_path: Path, decoder: CausalLM) -> CausalEmbeddings:
    """A published word-level clm artefact holding `decoder`'s weights."""
    tensors = {f"model.{k}": v for k, v in decoder.state_dict().items()}
    state = {"decoder": decoder.config.to_dict()}
    step = save_checkpoint(tmp_path / "train" / "checkpoints", 1, tensors, state, keep=1)
    files = write_decoder_files(tmp_path / "train", {"checkpoint": step.name}, tmp_path)
    save_numpy({"vectors": decoder.token.weight.detach().numpy()}, str(tmp_path / "v.st"))
    ids = pa.array(range(len(TOKENS)), pa.int32())
    counts = pa.array([1] * len(TOKENS), pa.int64())
    pq.write_table(pa.table({"id": ids, "token": TOKENS, "count": counts}), tmp_path / "vocab.pq")
    files |= {"vectors.safetensors": tmp_path / "v.st", "vocab.parquet": tmp_path / "vocab.pq"}
    manifest = {"model": {"kind": "clm"}, "tokenizer": {"kind": "word", "lowercase": True}}
    emb = load(ArtefactStore(tmp_path / "store").publish("clm", files, manifest))
    assert isinstance(emb, CausalEmbeddings)
    return emb


@pytest.mark.parametrize("tie_output", [True, False])
def test_gpt2_gives_the_decoders_logits_and_states(tmp_path: Path, tie_output: bool) -> None:
    config = DecoderConfig(len(TOKENS), 16, 2, 4, 24, max_len=20, tie_output=tie_output)
    decoder = CausalLM(config, seed=3).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping shows
        for name, p in decoder.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    emb = decoder_artefact(tmp_path, decoder)
    out = export_gpt2(emb, tmp_path / "gpt2")
    assert json.loads((out / CONFIG_FILE).read_text())["tie_word_embeddings"] is tie_output

    model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.tensor(
        [[BOS_ID, *np.random.default_rng(0).integers(len(S.SPECIAL_TOKENS), 45, 12)]]
    )
    with torch.no_grad():
        theirs = model(ids, output_hidden_states=True)
        expected = decoder.logits(decoder.encode(ids))
        torch.testing.assert_close(theirs.logits, expected, atol=1e-4, rtol=1e-4)
        # The last hidden state is after ln_f: the artefact's encode vectors.
        vectors = emb.encode(" ".join(TOKENS[i] for i in ids[0, 1:].tolist())).vectors[0]
        np.testing.assert_allclose(theirs.hidden_states[-1][0, 1:].numpy(), vectors, atol=1e-4)
    tied = model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert tied is tie_output
    # transformers' greedy generation writes what the artefact's does (specials aside).
    prompt = "w3 w4"
    text = emb.generate(prompt, 5)
    start = torch.tensor([[BOS_ID, emb.index("w3"), emb.index("w4")]])
    suppress = list(range(len(S.SPECIAL_TOKENS)))
    generated = model.generate(
        start, max_new_tokens=5, do_sample=False, suppress_tokens=suppress, pad_token_id=0
    )
    assert text == " ".join(TOKENS[i] for i in generated[0, 3:].tolist())


def test_only_a_clm_artefact_exports(tmp_path: Path) -> None:
    emb = Embeddings(np.zeros((len(TOKENS), 4), np.float32), TOKENS)
    with pytest.raises(ArtefactError, match="only a clm artefact"):
        export_gpt2(emb, tmp_path / "out")  # type: ignore[arg-type]
