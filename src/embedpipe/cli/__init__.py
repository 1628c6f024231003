"""`embedpipe`: one entry point with a sub-command per part of the pipeline (typer + rich).

`main` runs a command line. An expected error prints one line, `embedpipe: error: ...`, on
stderr and exits with the status `output` documents (2 for the command line and config,
1 otherwise); `--debug`, anywhere on the line, raises it with its traceback instead. Shell
completion: `embedpipe --install-completion` (bash, zsh, fish, PowerShell).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from embedpipe.cli import artefacts, pipeline, vectors
from embedpipe.cli.output import (
    BROKEN_PIPE,
    exit_status,
    print_error,
    silence_stdout,
)
from embedpipe.version import __version__

DEBUG = "--debug"


class PipeClosed(Exception):
    """The reader of stdout went away (raised past click, which would exit 1 for it)."""


class RootGroup(TyperGroup):
    """The `embedpipe` group: a closed stdout ends any command quietly (`PipeClosed`).
    (The help, which rich prints, ends quietly too, with rich's status 1.)"""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return result
        except BrokenPipeError as e:
            raise PipeClosed from e


app = typer.Typer(
    cls=RootGroup,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def show_version(value: bool) -> None:
    if value:
        print(f"embedpipe {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            DEBUG, help="On an error, print its traceback too (before or after the command)."
        ),
    ] = False,
) -> None:
    """Corpus-scale embedding pretraining: Spark corpus stages, torchrun training, versioned
    artefacts."""


PIPELINE, ARTEFACTS = "Pipeline (run config)", "Artefacts (read the store)"
app.command(rich_help_panel=PIPELINE)(pipeline.run)
app.command(rich_help_panel=PIPELINE)(pipeline.prepare)
app.command(rich_help_panel=PIPELINE)(pipeline.train)
app.command(rich_help_panel=PIPELINE)(pipeline.publish)
app.add_typer(pipeline.config_app, name="config", rich_help_panel=PIPELINE)
app.command(rich_help_panel=ARTEFACTS)(vectors.evaluate)
app.command(rich_help_panel=ARTEFACTS)(vectors.neighbors)
app.command(rich_help_panel=ARTEFACTS)(vectors.report)
app.add_typer(artefacts.app, name="artefacts", rich_help_panel=ARTEFACTS)


def take_debug(args: list[str]) -> tuple[bool, list[str]]:
    """Whether `--debug` is on the line (before any `--`), and the line with it moved to
    the front, where the root command takes it."""
    end = args.index("--") if "--" in args else len(args)
    debug = DEBUG in args[:end]
    rest = [a for a in args[:end] if a != DEBUG] + args[end:]
    return debug, ([DEBUG] if debug else []) + rest


def main(argv: Sequence[str] | None = None) -> None:
    """Run a command line (default `sys.argv`); returns when the command succeeded, else
    exits with its status (`output`), or raises the error (`--debug`, or a bug)."""
    debug, args = take_debug(list(sys.argv[1:] if argv is None else argv))
    command = typer.main.get_command(app)
    try:
        status = command.main(args, prog_name="embedpipe", standalone_mode=False)
    except PipeClosed:
        silence_stdout()
        sys.exit(BROKEN_PIPE)
    except typer.TyperException as e:  # the command line (click's UsageError and others)
        if e.format_message().strip():  # else a bare group: rich printed its help already
            print_error(usage_message(e))
        sys.exit(e.exit_code)
    except Exception as e:
        expected = exit_status(e)
        if expected is None or debug:
            raise
        print_error(e)
        sys.exit(expected)
    if isinstance(status, int):  # --help, --version, an interrupt (130)
        sys.exit(status)


def usage_message(error: typer.TyperException) -> str:
    """A command-line error's message, with where to read the usage."""
    context = getattr(error, "ctx", None)
    where = f" (see '{context.command_path} --help')" if context is not None else ""
    # typer words a bad choice "Value error, 'x' is not one of ...": the value is enough.
    return error.format_message().replace(": Value error, ", ": ") + where
