"""What the CLI writes: JSON documents on stdout, and expected errors as one line on stderr.

Exit statuses (README, "The command line"): 0 done; 1 an expected failure of the command
(bad input, no such artefact, a failed verify); 2 the command line or the config; 130
interrupted (Ctrl-C); 141 the reader of stdout went away (128 + SIGPIPE, as `yes | head`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

FAILED = 1  # an expected failure of the command (bad input, no such artefact, ...)
USAGE_ERROR = 2  # the command line or the config: as click exits on a bad option
INTERRUPTED = 130  # 128 + SIGINT
BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away, as `yes | head` ends

PREFIX = "embedpipe: error: "

# Errors a user can act on, by module, class and exit status: one line on stderr, no
# traceback (`--debug` shows it). Looked up among the modules already imported (an error
# cannot be raised before its class's module is), so the CLI imports no pyspark or torch
# for them. Any other exception is a bug and keeps its traceback.
EXPECTED_ERRORS = (
    ("embedpipe.config.values", "ConfigError", USAGE_ERROR),
    ("embedpipe.corpus.sources", "CorpusError", FAILED),
    ("embedpipe.artefacts.files", "ArtefactError", FAILED),  # the store's errors' base
    ("embedpipe.train.checkpoint", "CheckpointError", FAILED),
    ("embedpipe.train.launch", "TrainingFailed", FAILED),  # the workers' output said why
    ("embedpipe.corpus.spark.session", "JavaNotFoundError", FAILED),
    ("embedpipe.corpus.spark.lock", "StageBusyError", FAILED),
)

# What `pip install embedpipe` leaves out and `embedpipe[pipeline]` brings (DESIGN.md): a
# command that needs one of them fails with one line saying so on the core install.
PIPELINE_MODULES = frozenset(
    {"torch", "pyspark", "prefect", "numba", "matplotlib", "scipy", "pandas", "sentencepiece"}
)
PIPELINE_HINT = "this command needs the pipeline's dependencies: pip install 'embedpipe[pipeline]'"


class CommandError(Exception):
    """An expected failure of a command; its message says it all."""


def exit_status(error: BaseException) -> int | None:
    """The exit status of an expected error (`EXPECTED_ERRORS`, a missing file, a failed
    command); None for any other (a bug: it keeps its traceback)."""
    if isinstance(error, CommandError):
        return FAILED
    for module, name, status in EXPECTED_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(error, cls):
            return status
    if isinstance(error, FileNotFoundError) or missing_pipeline_module(error):
        return FAILED
    return None


def missing_pipeline_module(error: BaseException) -> bool:
    """Whether `error` is the import of a pipeline dependency the core install lacks."""
    name = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
    return name is not None and name.partition(".")[0] in PIPELINE_MODULES


def one_line(error: BaseException | str) -> str:
    """An error's message on one line."""
    return re.sub(r"\s*\n\s*", "; ", str(error).strip()) or type(error).__name__


def print_error(message: BaseException | str) -> None:
    """`embedpipe: error: <message>` on stderr, one line (with how to install a missing
    pipeline dependency)."""
    hint = (
        f" ({PIPELINE_HINT})"
        if isinstance(message, BaseException) and missing_pipeline_module(message)
        else ""
    )
    print(PREFIX + one_line(message) + hint, file=sys.stderr, flush=True)


def print_json(value: Any) -> None:
    """`value` as one JSON document on stdout: indented, keys sorted; highlighted by rich
    when stdout is a terminal (the same text, coloured), plain in a pipe or a file."""
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    if sys.stdout.isatty():
        from rich.console import Console

        Console(file=sys.stdout).print_json(text)
    else:
        print(text)


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit does not
    raise BrokenPipeError again (Python's documented way; see the `signal` docs)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured)
        pass
