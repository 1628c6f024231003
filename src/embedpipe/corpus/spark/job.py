"""The command line every `jobs/<stage>.py` shares: parse args, get a session, run the stage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from embedpipe.config import load_config
from embedpipe.corpus.session import get_spark
from embedpipe.corpus.stages import STAGE_FUNCTIONS


def run_job(stage: str, argv: Sequence[str] | None = None) -> int:
    """Run one corpus stage as a Spark application; print its manifest as JSON on stdout."""
    parser = argparse.ArgumentParser(
        prog=f"jobs/{stage}.py", description=f"embedpipe {stage} stage"
    )
    parser.add_argument("--config", help="run config (TOML or YAML)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set vocab.min_count=2",
    )
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    spark = get_spark(config.spark, app_name=f"embedpipe-{stage}")
    try:
        manifest = STAGE_FUNCTIONS[stage](spark, config)
    finally:
        spark.stop()
    print(json.dumps(manifest, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(run_job(sys.argv[1], sys.argv[2:]))
