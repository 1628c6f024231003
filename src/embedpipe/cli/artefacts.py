"""`embedpipe artefacts ACTION`: the store's commands.

They import `embedpipe.artefacts` only (numpy, pyarrow, safetensors, fsspec): they run on
the core install, without torch, pyspark, Prefect or numba.
"""

from __future__ import annotations

from typing import Annotated

import typer

from embedpipe.cli.options import Json, Name, Store, Version
from embedpipe.cli.output import print_json
from embedpipe.formats import ExportFormat  # the one list of formats

app = typer.Typer(
    help="List, show, verify, diff, alias, delete, gc and export artefacts.",
    no_args_is_help=True,
)


@app.command("list")
def list_versions(store: Store = None, json_: Json = False) -> None:
    """Every name and version, with its aliases: `name<TAB>version<TAB>aliases` lines."""
    from embedpipe.artefacts import open_store

    opened = open_store(store)
    rows = []
    for name in opened.names():
        aliases = opened.aliases(name)
        for version in opened.versions(name):
            tags = [a for a, v in sorted(aliases.items()) if v == version]
            rows.append({"name": name, "version": version, "aliases": tags})
    if json_:
        print_json(rows)
        return
    for row in rows:
        print(f"{row['name']}\t{row['version']}\t{','.join(row['aliases'])}")


@app.command()
def show(name: Name, version: Version = "latest", store: Store = None, json_: Json = False) -> None:
    """Print the manifest of a version (JSON, with or without --json)."""
    from embedpipe.artefacts import open_store, read_manifest

    print_json(read_manifest(open_store(store).resolve(name, version)).to_json())


@app.command()
def verify(
    name: Name, version: Version = "latest", store: Store = None, json_: Json = False
) -> None:
    """Re-check the sha256 of every file of a version (exit 1 naming the first that differs)."""
    from embedpipe.artefacts import open_store
    from embedpipe.artefacts import verify as verify_files

    path = open_store(store).resolve(name, version)
    manifest = verify_files(path)
    if json_:
        print_json(
            {
                "path": str(path),
                "name": manifest.name,
                "version": manifest.version,
                "files": sorted(manifest.files),
                "verified": True,
            }
        )
    else:
        print(f"{path}: every file matches its sha256")


@app.command()
def diff(
    name: Name,
    a: Annotated[str, typer.Argument(help="Version or alias (older).")],
    b: Annotated[str, typer.Argument(help="Version or alias (newer).")],
    store: Store = None,
    vectors: Annotated[
        bool,
        typer.Option(
            "--vectors", help="Also load both: words added/removed, cosine of shared words."
        ),
    ] = False,
    json_: Json = False,
) -> None:
    """What changed between two versions: hyper-parameters, config, stages, metrics, the
    parent of a continued run; with --vectors, what moved word by word."""
    from embedpipe.artefacts import (
        diff_manifests,
        diff_vectors,
        format_diff,
        open_store,
        read_embeddings,
        read_manifest,
    )

    opened = open_store(store)
    where_a, where_b = opened.resolve(name, a), opened.resolve(name, b)
    moved = diff_vectors(read_embeddings(where_a), read_embeddings(where_b)) if vectors else None
    changes = diff_manifests(read_manifest(where_a), read_manifest(where_b), vectors=moved)
    if json_:
        print_json(changes)
    else:
        print(format_diff(changes))


@app.command()
def alias(
    name: Name,
    alias: Annotated[str, typer.Argument(help="Alias to point, e.g. production.")],
    target: Annotated[str, typer.Argument(help="Version.")],
    store: Store = None,
) -> None:
    """Point an alias (e.g. production) at a version."""
    from embedpipe.artefacts import open_store

    opened = open_store(store)
    opened.set_alias(name, alias, target)
    print(f"{name}: {alias} -> {opened.aliases(name)[alias]}")


@app.command()
def delete(
    name: Name,
    target: Annotated[str, typer.Argument(help="Version.")],
    force: Annotated[bool, typer.Option(help="Also remove the aliases naming it.")] = False,
    store: Store = None,
) -> None:
    """Delete a version (refused while an alias names it, unless --force)."""
    from embedpipe.artefacts import open_store

    removed = open_store(store).delete(name, target, force=force)
    print(f"deleted {name} {target}" + (f" (aliases removed: {removed})" if removed else ""))


@app.command()
def gc(
    name: Name,
    keep: Annotated[int, typer.Option(help="Versions to keep, newest first.")],
    grace: Annotated[
        float | None,
        typer.Option(
            help="Seconds a superseded version stays readable for readers that resolved it "
            "(default: the store's, 600)."
        ),
    ] = None,
    store: Store = None,
) -> None:
    """Keep the newest N versions (and every aliased one); delete the others."""
    from embedpipe.artefacts import open_store

    print("deleted: " + (", ".join(open_store(store).gc(name, keep, grace=grace)) or "nothing"))


@app.command()
def export(
    name: Name,
    format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="w2v-text / w2v-binary / parquet: the vectors; hf: a transformers model "
            "directory (mlm, clm) or static vectors; sentence-transformers: a model directory.",
        ),
    ],
    out: Annotated[str, typer.Option(help="Output file, a path or fsspec URL.")],
    version: Version = "latest",
    include_special: Annotated[
        bool, typer.Option(help="Also export [PAD], [UNK] and the other special tokens.")
    ] = False,
    store: Store = None,
    json_: Json = False,
) -> None:
    """Write a version's vectors as word2vec text/binary or Parquet (token, vector)."""
    from embedpipe.artefacts import export_vectors, open_store

    path = open_store(store).resolve(name, version)
    written = export_vectors(path, format, out, include_special=include_special)
    if json_:
        print_json({"path": str(written), "format": format, "artefact": str(path)})
    else:
        print(written)
