"""`python -m embedpipe.cli`: the `embedpipe` command."""

from embedpipe.cli import main

main()
