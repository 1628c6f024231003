"""`python -m embedpipe.train` / `torchrun --nproc_per_node N -m embedpipe.train`."""

from __future__ import annotations

import argparse
from pathlib import Path

from embedpipe.config import load_config
from embedpipe.train.loop import train
from embedpipe.workdir import Workdir


def main() -> None:
    parser = argparse.ArgumentParser(prog="embedpipe.train", description=__doc__)
    parser.add_argument("--config", help="run config (TOML or YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="training directory (default <workdir>/train)")
    args = parser.parse_args()
    config = load_config(args.config, args.set)
    out = Path(args.out) if args.out else Workdir(config.workdir).train_dir
    train(config.train, config.workdir, out, config.store)


if __name__ == "__main__":
    main()
