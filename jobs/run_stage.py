"""A spark-submit entry in the repository for any corpus stage; the real one ships in the package.

    spark-submit --py-files embedpipe.zip jobs/run_stage.py build_vocab --config run.toml

Same arguments as `embedpipe/corpus/spark/job.py` (what `embedpipe prepare` and the flow
submit): the stage's name, then `--config FILE [--set key=value ...]`.
"""

import sys

from embedpipe.corpus.spark.job import main

if __name__ == "__main__":
    sys.exit(main())
