"""One torchrun rank of the distributed reader test: read an epoch, all-gather, write JSON.

Usage: torchrun --nproc_per_node 3 dist_reader_rank.py SPLIT_DIR OUT_DIR MODE
(MODE = train | eval). Uses gloo on CPU, as a multi-GPU run would use NCCL.
"""

from __future__ import annotations

import json
import os
import sys

import torch.distributed as dist

from haloscope.shards.read import ShardReader, build_loader


def main() -> None:
    split_dir, out_dir, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    train = mode == "train"
    reader = ShardReader(
        split_dir,
        batch_size=8,
        seed=11,
        rank=rank,
        world_size=world,
        shuffle=train,
        drop_last=train,
        with_table=True,
    )
    reader.set_epoch(1)
    keys, batches = [], 0
    for batch in build_loader(reader, num_workers=1):
        batches += 1
        t = batch["table"][batch["valid"].numpy()]
        keys.extend([k.decode(), int(c)] for k, c in zip(t["task_id"], t["copy"], strict=False))
        dist.barrier()  # a rank with fewer batches would hang here (the DDP failure mode)
    counts = [None] * world
    dist.all_gather_object(counts, batches)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(
            {
                "batches": batches,
                "all_counts": counts,
                "keys": keys,
                "batches_per_rank": reader.batches_per_rank(),
            },
            fh,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
