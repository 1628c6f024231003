"""spark-submit entry point of the tokenize stage: `spark-submit jobs/tokenize_text.py --config run.toml`.

(Not `tokenize.py`: a script of that name shadows the standard library's `tokenize` module.)
"""

import sys

from embedpipe.corpus.job import run_job

if __name__ == "__main__":
    sys.exit(run_job("tokenize"))
