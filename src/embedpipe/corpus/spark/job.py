"""The spark-submit application of the corpus stages: `spark-submit job.py STAGE... --config FILE`.

This file ships inside the package, so an installed wheel (or the image of a cluster) has
it; `submit.JOB_FILE` is its path and `spark.job_file` names it on a cluster's image in
cluster mode. It parses the arguments, takes spark-submit's session and runs the stages
through the registry in the order given, in one application (one driver and one set of
executors to start, not one per stage); each stage's manifest goes to stdout as one JSON
line as soon as the stage has committed, where `submit.submit_stages` reads it.

spark-submit runs it as a script, so its directory comes first on `sys.path`: no module of
this directory may share a name with a standard-library module (tests check this).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from embedpipe.config import load_config
from embedpipe.corpus.registry import STAGES, get_stage
from embedpipe.corpus.spark.session import get_spark


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="spark-submit job.py", description="run embedpipe corpus stages"
    )
    parser.add_argument("stages", nargs="+", choices=list(STAGES), help="the stages, in order")
    parser.add_argument("--config", help="run config (TOML, YAML or JSON)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set vocab.min_count=2 (repeatable)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run corpus stages as one Spark application; print each manifest as JSON on stdout."""
    args = parse_args(argv)
    config = load_config(args.config, args.set)
    spark = get_spark(config.spark, app_name=f"embedpipe-{'+'.join(args.stages)}")
    try:
        for stage in args.stages:
            manifest = get_stage(stage).run(spark, config)
            print(json.dumps(manifest, sort_keys=True), flush=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
