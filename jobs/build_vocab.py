"""spark-submit entry point of the build_vocab stage: `spark-submit jobs/build_vocab.py --config run.toml`."""

import sys

from embedpipe.corpus.job import run_job

if __name__ == "__main__":
    sys.exit(run_job("build_vocab"))
