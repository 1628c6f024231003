"""The stage registry: which stages write a set of tables."""

from __future__ import annotations

import pytest

from embedpipe.corpus.registry import STAGES, stages_for
from embedpipe.train.registry import corpus_stages, get_model


def test_stages_for_a_table_bring_what_it_is_made_from_in_pipeline_order() -> None:
    assert stages_for(["tokens"]) == ["tokenize"]
    assert stages_for(["cooccur"]) == ["tokenize", "build_vocab", "encode", "cooccur"]
    assert stages_for(["buckets", "vocab"]) == ["tokenize", "build_vocab", "encode", "bucket"]
    assert stages_for([s.table for s in STAGES.values()]) == list(STAGES)
    assert stages_for([]) == []


def test_an_unknown_table_is_named() -> None:
    with pytest.raises(KeyError, match="no corpus stage writes table 'nope'"):
        stages_for(["nope"])


BASE = ["tokenize", "build_vocab", "encode"]


@pytest.mark.parametrize(
    "model, stages",
    [
        ("sgns", BASE), ("cbow", BASE), ("fasttext", BASE),
        ("glove", [*BASE, "cooccur"]),
        ("mlm", [*BASE, "bucket"]), ("clm", [*BASE, "bucket"]), ("bilm", [*BASE, "bucket"]),
    ],
)  # fmt: skip
def test_a_model_needs_the_stages_of_its_table_and_the_vocabulary(
    model: str, stages: list[str]
) -> None:
    assert corpus_stages(model) == stages
    assert {STAGES[s].table for s in stages} >= set(get_model(model).input_tables)
