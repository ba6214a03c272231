"""One rank of the DDP-equivalence test: 3 optimiser steps on this rank's half of a batch.

Run by ``test_ddp.py`` through ``torchrun --nproc-per-node N``; rank 0 saves the weights
and an ``all_gather_1d`` result to ``argv[1]``. ``argv[2]`` picks how gradients are averaged:
``ddp`` (the model wrapped in DistributedDataParallel in the eager ``TrainStep``) or ``sync``
(the unwrapped model in the eager ``TrainStep`` with ``make_grad_sync``: the code path the
graphed multi-GPU step captures). Both run the one ``train_step``.
"""

from __future__ import annotations

import sys

import torch

from haloscope.train.dist import (
    all_gather_1d,
    broadcast_module,
    init_distributed,
    make_grad_sync,
    shutdown,
    wrap_ddp,
)
from haloscope.train.model import build_model
from haloscope.train.optim import build_optimizer
from haloscope.train.step import StepOptions, TrainStep

GLOBAL_BATCH = 8


def main(out: str, how: str) -> None:
    env = init_distributed("cpu")
    torch.manual_seed(0)
    model = build_model(
        arch="convnext_atto",
        meta_cols=["psfsize_r", "psfdepth_r"],
        meta_mean=[1.3, 24.5],
        meta_std=[0.2, 0.5],
        dropout=0.0,
        drop_path_rate=0.0,
    )
    images = torch.randn(GLOBAL_BATCH, 3, 64, 64)
    meta = torch.randn(GLOBAL_BATCH, 2) * 0.2 + torch.tensor([1.3, 24.5])
    labels = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 1])
    per = GLOBAL_BATCH // env.world_size
    mine = slice(env.rank * per, (env.rank + 1) * per)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, lr=1e-3, weight_decay=1e-2)
    losses = []
    if how == "sync":
        if env.rank > 0:  # a different start on rank 1: broadcast_module must undo it
            torch.nn.init.normal_(next(model.parameters()))
        broadcast_module(model, env)
        options = StepOptions(augment=False, channels_last=False, max_grad_norm=0.0)
        step = TrainStep(
            model, None, opt, device="cpu", options=options, grad_sync=make_grad_sync(env)
        )
        # no clipping: the averaged gradients are compared as they are (a sum instead of a
        # mean would not change Adam's steps much, but it changes these)
        for _ in range(3):
            losses.append(step.step(images[mine], meta[mine], labels[mine])["loss"].item())
    else:
        options = StepOptions(augment=False, channels_last=False, max_grad_norm=1.0)
        step = TrainStep(wrap_ddp(model, env), None, opt, device="cpu", options=options)
        for _ in range(3):
            losses.append(step.step(images[mine], meta[mine], labels[mine])["loss"].item())
    gathered = all_gather_1d(torch.arange(env.rank + 2, dtype=torch.float32) + 10 * env.rank, env)
    if env.is_main:
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if how == "sync"}
        torch.save(
            {
                "model": model.state_dict(),
                "init": init,
                "gathered": gathered,
                "losses": losses,
                "grads": grads,
            },
            out,
        )
    shutdown(env)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ddp")
