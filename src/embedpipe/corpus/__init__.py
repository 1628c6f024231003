"""Corpus stages: Spark DataFrame transforms, their job runner and the stage manifests."""
