"""spark-submit entry point of the encode stage: `spark-submit jobs/encode.py --config run.toml`."""

import sys

from embedpipe.corpus.job import run_job

if __name__ == "__main__":
    sys.exit(run_job("encode"))
