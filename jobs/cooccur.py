"""spark-submit entry point of the cooccur stage: `spark-submit jobs/cooccur.py --config run.toml`."""

import sys

from embedpipe.corpus.job import run_job

if __name__ == "__main__":
    sys.exit(run_job("cooccur"))
