"""Training over the Parquet tables: data shards, models, the DDP trainer and checkpoints."""
