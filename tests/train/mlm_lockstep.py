"""One rank of the trainer's agreement loop over its bucket batches (gloo, no model).

Run as `python mlm_lockstep.py RANK WORLD PORT BUCKETS_DIR CHUNK_ROWS`; prints one JSON line:
the steps taken, the real tokens they held, and the batches left unseen in this rank's share.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from embedpipe.train.buckets import iter_bucket_batches, rank_bucket_chunks
from embedpipe.train.distributed import Cluster, agree
from embedpipe.train.registry import MLMConfig


def main() -> None:
    rank, world, port = (int(x) for x in sys.argv[1:4])
    buckets, chunk_rows = sys.argv[4], int(sys.argv[5])
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        cluster = Cluster(rank, world, rank, torch.device("cpu"))
        config = MLMConfig(max_len=40, max_tokens=120, heldout=0.1, chunk_rows=chunk_rows)
        chunks = rank_bucket_chunks(buckets, rank, world, chunk_rows)
        stream = (b for c in iter_bucket_batches(config, chunks, 35, 1, 0, rank) for b in c)
        head = next(stream, None)
        steps, tokens = 0, 0
        while True:
            agreed, _ = agree(head, cluster)
            if agreed == 0:
                break
            for _ in range(agreed):
                tokens += head.tokens
                head = next(stream, None)
                steps += 1
        left = 0 if head is None else 1 + sum(1 for _ in stream)
        print(json.dumps({"rank": rank, "steps": steps, "tokens": tokens, "left": left}))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
