"""The `embedpipe` command (and `python -m embedpipe`).

Sets up the bytecode cache (`bytecode`) before the command imports anything else, so the
imports that make up most of a start are compiled at most once."""

from __future__ import annotations

import sys

from embedpipe.bytecode import use_bytecode_cache


def main() -> None:
    """Run the `embedpipe` command line; a Spark session it started goes with it."""
    use_bytecode_cache()
    from embedpipe.cli import main as run_command

    try:
        run_command()
    finally:
        if "embedpipe.corpus.spark.session" in sys.modules:  # the command ran Spark here
            from embedpipe.corpus.spark.session import close_gateway

            close_gateway()


if __name__ == "__main__":
    main()
