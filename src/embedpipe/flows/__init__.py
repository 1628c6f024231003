"""The Prefect flows of the package (`pretrain`), importable from an installed wheel."""
