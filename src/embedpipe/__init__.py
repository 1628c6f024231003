"""embedpipe: corpus-scale embedding pretraining with Spark, Prefect and PyTorch DDP."""

from embedpipe.version import __version__


def load(path_or_name, version: str = "latest", store=None):  # noqa: ANN001, ANN201
    """Load a published embedding artefact (see `embedpipe.artefacts.load`)."""
    from embedpipe.artefacts import load as _load

    return _load(path_or_name, version=version, store=store)


__all__ = ["__version__", "load"]
