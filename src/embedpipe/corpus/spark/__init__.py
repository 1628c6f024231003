"""Spark plumbing of the corpus stages: the session, part files, the stage commit, spark-submit.

`session` (the in-process or spark-submit session; `jvm` launches a local session's JVM
first, `forkserver` starts its Python workers, `daemon` is the daemon Spark launches for
them, `converters` spares py4j pyspark's test imports), `parts` (tables as part files written
and read by Python tasks), `commit` (`run_stage`: a new run directory, the manifest as the
commit, skip when unchanged), `lock` (one run of a stage at a time on a workdir), `launch`
(in-process or spark-submit, as the config says), `submit` (the spark-submit command line)
and `job` (the one spark-submit application, shipped in the package).
"""
