"""prefect.yaml's entrypoint (`flows/pretrain.py:pretrain_embeddings`): the flow of the package.

The flow lives in `embedpipe.flows.pretrain`, so an installed wheel runs it; this file only
re-exports it for deployments made from a checkout.
"""

from embedpipe.flows.pretrain import PretrainParameters, pretrain_embeddings

__all__ = ["PretrainParameters", "pretrain_embeddings"]
