"""The options several commands share, declared once (typer `Annotated` types)."""

from __future__ import annotations

from typing import Annotated

import typer


def complete_name(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of artefact names: the store's names (`--store` if given before)."""
    try:
        from embedpipe.artefacts import open_store

        names = open_store(ctx.params.get("store")).names()
    except Exception:  # completion must never fail the shell: no store, no names
        return []
    return [name for name in names if name.startswith(incomplete)]


ConfigFile = Annotated[
    str | None, typer.Option("--config", help="Run config file (TOML, YAML or JSON).")
]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set train.epochs=5 (repeatable).",
    ),
]
Store = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Store root, a path or fsspec URL (default $EMBEDPIPE_STORE or ./artefacts).",
    ),
]
Version = Annotated[str, typer.Option("--version", help="Version or alias.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
Name = Annotated[
    str, typer.Argument(help="Artefact name in the store.", autocompletion=complete_name)
]
NameOrDir = Annotated[
    str,
    typer.Argument(
        help="Artefact directory, or a name in the store.", autocompletion=complete_name
    ),
]
