"""`embedpipe`: one entry point with a sub-command per part of the pipeline."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from embedpipe.config import RunConfig, load_config
from embedpipe.corpus.registry import STAGES
from embedpipe.version import __version__

USAGE_ERROR = 2  # the command line or the config: as argparse exits on a bad option
FAILED = 1  # an expected failure of the command (bad input, no such artefact, ...)
BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away, as `yes | head` ends

# Errors a user can act on, by module, class and exit status: one line on stderr, no
# traceback (`--debug` shows it). Looked up among the modules already imported (an error
# cannot be raised before its class's module is), so the CLI imports no pyspark or torch
# for them. Any other exception is a bug and keeps its traceback.
EXPECTED_ERRORS = (
    ("embedpipe.config.values", "ConfigError", USAGE_ERROR),
    ("embedpipe.corpus.sources", "CorpusError", FAILED),
    ("embedpipe.artefacts.files", "ArtefactError", FAILED),  # the store's errors' base
    ("embedpipe.train.checkpoint", "CheckpointError", FAILED),
    ("embedpipe.corpus.spark.session", "JavaNotFoundError", FAILED),
)


class CommandError(Exception):
    """An expected failure of a command; its message says it all."""


PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="run config file (TOML, YAML or JSON)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=5 (repeatable)",
    )  # fmt: skip


def add_artefact_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artefact", help="artefact directory, or a name in the store")
    parser.add_argument("--version", default="latest", help="version or alias (default latest)")
    parser.add_argument(
        "--store", help="store root, a path or fsspec URL (default $EMBEDPIPE_STORE or ./artefacts)"
    )


def config_of(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.set)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def cmd_prepare(args: argparse.Namespace) -> None:
    from embedpipe.corpus.spark.launch import launch_stage

    config = config_of(args)
    for stage in args.stage or list(STAGES):
        manifest = launch_stage(stage, config, log=print)
        state = "reused" if manifest["skipped"] else f"{manifest['seconds']}s"
        print(f"{stage:12s} {state:>8s}  {json.dumps(manifest['counts'])[:160]}")


def cmd_train(args: argparse.Namespace) -> None:
    from embedpipe.train.launch import run_training
    from embedpipe.workdir import Workdir

    config = config_of(args)
    if args.nproc:
        config = load_config(args.config, [*args.set, f"train.nproc={args.nproc}"])
    summary = run_training(config, Workdir(config.workdir).train_dir)
    print_json({k: summary[k] for k in ("steps", "seconds", "words_per_sec", "skipped")})


def cmd_publish(args: argparse.Namespace) -> None:
    from embedpipe.artefacts.publish import publish_training
    from embedpipe.workdir import Workdir

    config = config_of(args)
    print(publish_training(config, Workdir(config.workdir).train_dir))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from embedpipe.artefacts import load
    from embedpipe.artefacts.publish import evaluate_vectors
    from embedpipe.evaluate import evaluate_similarity, read_pairs

    emb = load(args.artefact, version=args.version, store=args.store)
    if hasattr(emb, "encode"):  # masked LM: its input matrix as words, and its held-out loss
        from embedpipe.artefacts.encoder import evaluate_input_matrix

        metrics = emb.manifest.metrics if emb.manifest else None
        results = {**evaluate_input_matrix(emb), "mlm": metrics.mlm if metrics else None}
    else:
        results = evaluate_vectors(emb.vectors, emb.vocab)
    for path in args.pairs:
        results[Path(path).name] = evaluate_similarity(emb.vectors, emb.vocab, read_pairs(path))
    print_json(results)


def cmd_neighbors(args: argparse.Namespace) -> None:
    from embedpipe.artefacts import load
    from embedpipe.text import tokenize_line

    emb = load(args.artefact, version=args.version, store=args.store)
    words = tokenize_line(args.word) or [args.word]
    if emb.lookup(words[0]) is None:
        raise CommandError(f"{args.word!r} is not in the vocabulary of {emb.path}")
    for token, score in emb.most_similar(words[0], topn=args.k):
        print(f"{score:.4f}  {token}")


def cmd_run(args: argparse.Namespace) -> None:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from embedpipe.flows.pretrain import PretrainParameters, pretrain_embeddings

    # Resolved here and passed as parameters, so the flow run's parameters (shown in the
    # Prefect UI) hold every setting, with credentials masked, never a raw override.
    config = load_config(args.config, args.set)
    result = pretrain_embeddings(PretrainParameters.from_run_config(config))
    print_result(result)


def print_result(result: dict[str, Any]) -> None:
    from embedpipe.evaluate import format_score

    print(f"\nPublished {result['artefact']}  (report: {result['report']})")
    for row in result["scores"]:
        print(f"  {format_score(row)}")
    print("Nearest neighbours:")
    for word, neighbours in result["neighbours"].items():
        print(f"  {word:10s} {', '.join(t for t, _ in neighbours[:6])}")


def cmd_artefacts(args: argparse.Namespace) -> None:
    from embedpipe.artefacts import (
        diff_manifests,
        export_vectors,
        format_diff,
        open_store,
        read_manifest,
        verify,
    )

    store = open_store(args.store)
    action = args.action
    if action == "list":
        for name in store.names():
            aliases = store.aliases(name)
            for version in store.versions(name):
                tags = ",".join(a for a, v in sorted(aliases.items()) if v == version)
                print(f"{name}\t{version}\t{tags}")
    elif action == "show":
        print_json(read_manifest(store.resolve(args.name, args.version)).to_json())
    elif action == "verify":
        path = store.resolve(args.name, args.version)
        verify(path)
        print(f"{path}: every file matches its sha256")
    elif action == "diff":
        a = read_manifest(store.resolve(args.name, args.a))
        b = read_manifest(store.resolve(args.name, args.b))
        diff = diff_manifests(a, b)
        print(json.dumps(diff, indent=2) if args.json else format_diff(diff))
    elif action == "alias":
        store.set_alias(args.name, args.alias, args.target)
        print(f"{args.name}: {args.alias} -> {store.aliases(args.name)[args.alias]}")
    elif action == "delete":
        removed = store.delete(args.name, args.target, force=args.force)
        print(
            f"deleted {args.name} {args.target}"
            + (f" (aliases removed: {removed})" if removed else "")
        )
    elif action == "gc":
        print(
            "deleted: " + (", ".join(store.gc(args.name, args.keep, grace=args.grace)) or "nothing")
        )
    elif action == "export":
        path = store.resolve(args.name, args.version)
        print(export_vectors(path, args.format, args.out, include_special=args.include_special))


def cmd_report(args: argparse.Namespace) -> None:
    from embedpipe.artefacts import open_store
    from embedpipe.evaluate.report import write_report

    store = open_store(args.store)
    history = store.manifests(args.name)
    print(write_report(store.resolve(args.name, args.version), Path(args.out), history=history))


def add_pipeline_commands(sub: argparse._SubParsersAction) -> None:
    """prepare, train, publish and run: the pipeline's steps, each reading the run config."""
    p = sub.add_parser(
        "prepare", help="run the corpus stages (in-process Spark, or spark-submit: spark.submit)"
    )
    add_config_args(p)
    p.add_argument(
        "--stage", action="append", choices=list(STAGES), help="run only this stage (repeatable)"
    )
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train under torchrun")
    add_config_args(p)
    p.add_argument("--nproc", type=int, help="processes (default train.nproc)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("publish", help="evaluate and publish the trained vectors")
    add_config_args(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("run", help="the whole flow: prepare, train, publish, evaluate")
    add_config_args(p)
    p.set_defaults(func=cmd_run)


def add_artefacts_commands(sub: argparse._SubParsersAction) -> None:
    """`embedpipe artefacts ACTION`: the store's commands."""
    p = sub.add_parser("artefacts", help="list, show, verify, diff, alias, export, gc artefacts")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("list", help="every name and version, with aliases")
    a.add_argument("--store")
    for action, text in (("show", "print the manifest"), ("verify", "re-check every sha256")):
        a = actions.add_parser(action, help=text)
        a.add_argument("name")
        a.add_argument("--version", default="latest")
        a.add_argument("--store")
    a = actions.add_parser("diff", help="what changed between two versions")
    a.add_argument("name")
    a.add_argument("a", help="version or alias")
    a.add_argument("b", help="version or alias")
    a.add_argument("--json", action="store_true")
    a.add_argument("--store")
    a = actions.add_parser("alias", help="point an alias (e.g. production) at a version")
    a.add_argument("name")
    a.add_argument("alias")
    a.add_argument("target", help="version")
    a.add_argument("--store")
    a = actions.add_parser("delete", help="delete a version (refused while an alias names it)")
    a.add_argument("name")
    a.add_argument("target", help="version")
    a.add_argument("--force", action="store_true", help="also remove aliases naming it")
    a.add_argument("--store")
    a = actions.add_parser("gc", help="keep the newest N versions (and every aliased one)")
    a.add_argument("name")
    a.add_argument("--keep", type=int, required=True)
    a.add_argument(
        "--grace",
        type=float,
        help="seconds a superseded version stays readable for readers that resolved it "
        "(default: the store's, 600)",
    )
    a.add_argument("--store")
    a = actions.add_parser("export", help="word2vec text/binary or Parquet (token, vector)")
    a.add_argument("name")
    a.add_argument("--version", default="latest")
    a.add_argument("--format", required=True, choices=["w2v-text", "w2v-binary", "parquet"])
    a.add_argument("--out", required=True)
    a.add_argument("--include-special", action="store_true")
    a.add_argument("--store")
    p.set_defaults(func=cmd_artefacts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedpipe", description=__doc__)
    parser.add_argument("--version", action="version", version=f"embedpipe {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, print its traceback too")
    sub = parser.add_subparsers(dest="command", required=True)
    add_pipeline_commands(sub)

    p = sub.add_parser("evaluate", help="benchmark scores of an artefact")
    add_artefact_args(p)
    p.add_argument(
        "--pairs", action="append", default=[], metavar="FILE",
        help="also score your own word<TAB>word<TAB>score file (repeatable)",
    )  # fmt: skip
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("neighbors", help="nearest neighbours of a word")
    add_artefact_args(p)
    p.add_argument("word")
    p.add_argument("-k", type=int, default=10)
    p.set_defaults(func=cmd_neighbors)

    add_artefacts_commands(sub)

    p = sub.add_parser("report", help="Markdown report with plots for an artefact version")
    p.add_argument("name")
    p.add_argument("--version", default="latest")
    p.add_argument("--out", required=True)
    p.add_argument("--store")
    p.set_defaults(func=cmd_report)
    add_debug_flag(sub)
    return parser


def add_debug_flag(sub: argparse._SubParsersAction) -> None:
    """`--debug` after the command too (`embedpipe prepare --config x --debug`), in every
    sub-command and theirs; absent there, it leaves the global flag's value alone."""
    for parser in sub.choices.values():
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                add_debug_flag(action)


def exit_status(error: BaseException) -> int | None:
    """The exit status of an expected error (`EXPECTED_ERRORS`, a missing file, a failed
    command); None for any other (a bug: it keeps its traceback)."""
    if isinstance(error, CommandError):
        return FAILED
    for module, name, status in EXPECTED_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(error, cls):
            return status
    if isinstance(error, FileNotFoundError):
        return FAILED
    return None


def one_line(error: BaseException) -> str:
    """An error's message on one line."""
    return re.sub(r"\s*\n\s*", "; ", str(error).strip()) or type(error).__name__


def main(argv: list[str] | None = None) -> None:
    """Run a command. An expected error prints `embedpipe: error: ...` on stderr and exits
    1 (2 for the command line and config: argparse's status for a bad option); with
    `--debug`, or for any other exception, the traceback is printed."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(BROKEN_PIPE)
    except Exception as e:
        status = exit_status(e)
        if status is None or args.debug:
            raise
        print(f"embedpipe: error: {one_line(e)}", file=sys.stderr)
        sys.exit(status)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit does not
    raise BrokenPipeError again (Python's documented way; see the `signal` docs)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured)
        pass


if __name__ == "__main__":
    main()
