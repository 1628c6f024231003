"""Spark plumbing of the corpus stages: the session, part files, the stage commit, spark-submit.

`session` (the in-process or spark-submit session), `parts` (tables as part files written
and read by Python tasks), `commit` (`run_stage`: a new run directory, the manifest as the
commit, skip when unchanged), `lock` (one run of a stage at a time on a workdir), `launch`
(in-process or spark-submit, as the config says), `submit` (the spark-submit command line)
and `job` (the one spark-submit application, shipped in the package).
"""
