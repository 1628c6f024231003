"""How many processes a node runs and how many threads each: `train.nproc` / `train.threads`.

With `auto` (the default) the layout follows the machine: one process per GPU, or on a
CPU node one process whose kernel threads share its tables lock-free (Hogwild), as the
word2vec and GloVe C tools do. More processes on the same cores would each hold a replica
of the tables and exchange their changes (`sync.RowSync`): that pays across machines, not
inside one. A number given for either setting is used as it is.
"""

from __future__ import annotations

import dataclasses
import os

from embedpipe.config import RunConfig, TrainConfig


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask: cgroups and taskset count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_layout(config: RunConfig) -> RunConfig:
    """`config` with `train.nproc` and `train.threads` as numbers for this node, before
    launch (see the module doc)."""
    nproc = config.train.nproc
    if nproc == "auto":
        nproc = max(gpu_count(), 1)
    train = resolve_threads(dataclasses.replace(config.train, nproc=nproc), nproc)
    return dataclasses.replace(config, train=train)


def resolve_threads(train: TrainConfig, local_world: int) -> TrainConfig:
    """`train` with numbers for a rank of `local_world` processes on its node: an "auto"
    thread count shares the node's cores among them."""
    nproc = local_world if train.nproc == "auto" else train.nproc
    threads = max(1, cpu_cores() // local_world) if train.threads == "auto" else train.threads
    return dataclasses.replace(train, nproc=nproc, threads=threads)


def describe_layout(config: RunConfig) -> str:
    """One line saying what runs where, and why (logged before training starts)."""
    train, nodes = config.train, config.launch.nnodes
    gpus = gpu_count()
    where = f"{gpus} GPU(s)" if gpus else f"{cpu_cores()} CPU cores"
    ranks = (
        f"{nodes} node(s) x {train.nproc} process(es)"
        if nodes > 1
        else f"{train.nproc} process(es)"
    )
    reason = (
        "one process per GPU"
        if gpus
        else "threads share one process's tables; processes pay only across machines"
    )
    return f"layout: {ranks} x {train.threads} thread(s) on {where} ({reason})"
