"""Training over the Parquet tables: one loop (`loop`), models as registered specs (`registry`,
`specs`), the process group and row exchange (`distributed`), data shards and checkpoints."""
