"""The `embedpipe` command (and `python -m embedpipe`).

Sets up the bytecode cache (`bytecode`) before the command imports anything else, so the
imports that make up most of a start are compiled at most once."""

from __future__ import annotations

from embedpipe.bytecode import use_bytecode_cache


def main() -> None:
    """Run the `embedpipe` command line."""
    use_bytecode_cache()
    from embedpipe.cli import main as run_command

    run_command()


if __name__ == "__main__":
    main()
