"""The one home of distributed code: launch env, process group, collectives, DDP wrap.

Three ways a process can be started (``detect_launch``):

- ``torchrun`` (single or multi node): ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR``/``MASTER_PORT``, read through ``init_process_group``;
- plain ``srun`` ranks, one process per task and no torchrun: ``SLURM_PROCID``,
  ``SLURM_LOCALID`` and ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``); the rendezvous is
  ``MASTER_ADDR`` if set, else the first host of ``SLURM_STEP_NODELIST`` /
  ``SLURM_JOB_NODELIST``, on ``MASTER_PORT`` if set, else ``20000 + SLURM_JOB_ID % 40000``
  (so two jobs sharing a node do not collide);
- a single process (rank 0 of 1).

nccl on CUDA, gloo on CPU. Nothing else in haloscope reads these variables or calls
``torch.distributed``. ``--device auto`` warns when an NVIDIA GPU is present but torch cannot
use it (``train.device.gpu_problem``).
"""

from __future__ import annotations

import gc
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel

from haloscope.errors import ConfigError
from haloscope.train import device as gpu

__all__ = [
    "DistEnv",
    "Launch",
    "detect_launch",
    "first_host",
    "pick_device",
    "init_distributed",
    "barrier",
    "all_reduce_mean",
    "all_reduce_max",
    "all_gather_1d",
    "broadcast_object",
    "all_gather_object",
    "wrap_ddp",
    "make_grad_sync",
    "broadcast_module",
    "unwrap",
    "shutdown",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job.

    Attributes:
        rank: global rank.
        local_rank: rank on this node (selects the GPU).
        world_size: number of processes.
        device: the torch device this rank computes on.
        is_main: rank 0, the only rank that logs to the console and writes files.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    is_main: bool = True

    @property
    def is_distributed(self) -> bool:
        """True when a process group with more than one rank is active."""
        return self.world_size > 1


@dataclass(frozen=True)
class Launch:
    """How this process was started, read from its environment (no process group yet).

    Attributes:
        launcher: ``torchrun`` (its variables), ``srun`` (Slurm task variables, no torchrun)
            or ``single``.
        rank: global rank.
        local_rank: rank on this node.
        world_size: number of processes.
        init_method: ``tcp://HOST:PORT`` for ``srun`` ranks; None (``env://``) otherwise.
    """

    launcher: str = "single"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    init_method: str | None = None


# what torchrun sets; Slurm's per-task variables (srun sets the SLURM_STEP_* ones)
TORCHRUN_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
SLURM_VARS = (
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_STEP_ID",
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_JOB_NODELIST",
    "SLURM_NNODES",
)
_HOW = (
    "launch one process per task with `srun` (or one torchrun per node: "
    "`srun torchrun ...`), see docs/cluster.md"
)


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm host list: ``gh[003-006,9]-ib,login1`` -> ``gh003-ib``."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            end = i
            break
    # each bracket group [a-b,c] contributes its first number, zero padding kept
    return re.sub(r"\[([^\],-]+)[^\]]*\]", r"\1", nodelist[:end].strip())


def _slurm_launch(env: Mapping[str, str]) -> Launch:
    world = _int_env(env, "SLURM_STEP_NUM_TASKS", _int_env(env, "SLURM_NTASKS", 1))
    if world <= 1:
        return Launch()
    if "SLURM_STEP_ID" not in env and "SLURM_STEP_NUM_TASKS" not in env:
        raise ConfigError(
            f"SLURM_NTASKS={world} but this process is not one of an srun step's tasks (the "
            f"batch script or an salloc shell runs one process): {_HOW}"
        )
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    addr = env.get("MASTER_ADDR") or (first_host(nodelist) if nodelist else None)
    if not addr:
        raise ConfigError(
            f"{world} Slurm tasks but no MASTER_ADDR and no SLURM_STEP_NODELIST/"
            f"SLURM_JOB_NODELIST to take the rendezvous host from: set MASTER_ADDR, or {_HOW}"
        )
    port = _int_env(env, "MASTER_PORT", 20000 + _int_env(env, "SLURM_JOB_ID", 0) % 40000)
    return Launch(
        "srun",
        _int_env(env, "SLURM_PROCID", 0),
        _int_env(env, "SLURM_LOCALID", 0),
        world,
        f"tcp://{addr}:{port}",
    )


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch:
    """Rank, local rank and world size of this process from torchrun's or Slurm's variables.

    Args:
        environ: the environment (default ``os.environ``).

    Raises:
        ConfigError: a variable is not an integer, or several Slurm tasks are expected but
            this process is not an srun task or no rendezvous host can be derived.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env or "RANK" in env:
        world = _int_env(env, "WORLD_SIZE", 1)
        return Launch(
            "torchrun" if world > 1 else "single",
            _int_env(env, "RANK", 0),
            _int_env(env, "LOCAL_RANK", 0),
            world,
        )
    if "SLURM_PROCID" in env:
        return _slurm_launch(env)
    return Launch()


def pick_device(
    requested: str, local_rank: int = 0, world_size: int = 1, *, warn: bool = True
) -> torch.device:
    """The device of this rank for ``--device`` ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` is ``cuda:<local_rank>`` when CUDA is available, else the CPU, with a warning
    (unless ``warn`` is False) when an NVIDIA GPU is present but torch cannot use it
    (``train.device.gpu_problem``).

    Raises:
        ConfigError: an unknown device, CUDA asked for but unusable, or ``cuda:N`` on
            several ranks.
    """
    if requested == "auto":
        probe = gpu.probe_gpu()
        problem = gpu.gpu_problem(probe)
        if problem is not None and warn:
            log.warning("GPU PRESENT BUT UNUSABLE: %s", problem)
        requested = "cuda" if probe.cuda_available else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    if not requested.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {requested!r}")
    if not torch.cuda.is_available():
        problem = gpu.gpu_problem(gpu.probe_gpu())
        raise ConfigError(
            f"--device {requested}: CUDA is not available on this machine"
            + (f" ({problem})" if problem else "")
        )
    if requested == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if world_size > 1:
        raise ConfigError("--device cuda:N is for one process; under torchrun use --device cuda")
    return torch.device(requested)


def init_distributed(device: str = "auto") -> DistEnv:
    """Read the launch environment, pick the device and start the process group.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The ``DistEnv`` of this process.

    Raises:
        ConfigError: see ``detect_launch`` and ``pick_device``.
    """
    launch = detect_launch()
    dev = pick_device(device, launch.local_rank, launch.world_size)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if launch.world_size > 1 and not torch_dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict = {"device_id": dev} if dev.type == "cuda" else {}
        if launch.init_method is not None:  # srun ranks: no torchrun variables to read
            kwargs.update(
                init_method=launch.init_method, rank=launch.rank, world_size=launch.world_size
            )
        torch_dist.init_process_group(backend=backend, **kwargs)
        log.info(
            "process group up: backend=%s world_size=%d launcher=%s",
            backend,
            launch.world_size,
            launch.launcher,
        )
    rank = launch.rank
    return DistEnv(rank, launch.local_rank, launch.world_size, dev, rank == 0)


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op on one process)."""
    if env.is_distributed:
        torch_dist.barrier()


def all_reduce_mean(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Mean of a flat dict of floats over ranks (same keys on every rank)."""
    if not env.is_distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=env.device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return {k: float(v) / env.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def all_reduce_max(value: int, env: DistEnv) -> int:
    """Maximum of an integer over ranks (used to agree on stop requests)."""
    if not env.is_distributed:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=env.device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_1d(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenate a 1-D tensor from every rank in rank order (lengths may differ)."""
    if not env.is_distributed:
        return tensor
    tensor = tensor.to(env.device).contiguous()
    size = torch.tensor([tensor.numel()], dtype=torch.int64, device=env.device)
    sizes = [torch.zeros_like(size) for _ in range(env.world_size)]
    torch_dist.all_gather(sizes, size)
    lengths = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=tensor.dtype, device=env.device)
    padded[: tensor.numel()] = tensor
    parts = [torch.empty_like(padded) for _ in range(env.world_size)]
    torch_dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, lengths, strict=True)])


def broadcast_object(obj: object, env: DistEnv) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not env.is_distributed:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: object, env: DistEnv) -> list[object]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` on one process)."""
    if not env.is_distributed:
        return [obj]
    out: list[object] = [None] * env.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def wrap_ddp(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when there are several ranks, else ``model``."""
    if not env.is_distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def make_grad_sync(env: DistEnv) -> Callable[[list[torch.Tensor]], None] | None:
    """DDP's gradient averaging as one flat all-reduce that a CUDA graph can capture.

    The graphed training step (``train/cuda_graph.py``) calls the returned function between
    ``backward`` and the clip: every parameter's gradient is packed into one buffer (a
    missing gradient counts as zeros, so every rank sends the same layout), summed over ranks
    and divided by the world size, exactly the mean that DDP applies. Captured once, the
    all-reduce then replays with the rest of the step. None on one process.
    """
    if not env.is_distributed:
        return None
    world_size = env.world_size

    def sync(params: list[torch.Tensor]) -> None:
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
        flat.div_(world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view(g.shape))
            offset += g.numel()

    return sync


@torch.no_grad()
def broadcast_module(model: torch.nn.Module, env: DistEnv) -> None:
    """Copy rank 0's parameters and buffers to every rank (what DDP does when it wraps)."""
    if not env.is_distributed:
        return
    for tensor in model.state_dict().values():
        if tensor.is_contiguous():
            torch_dist.broadcast(tensor, src=0)
        else:  # channels_last weights: collectives want a plain contiguous buffer
            buf = tensor.contiguous()
            torch_dist.broadcast(buf, src=0)
            tensor.copy_(buf)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module  # DDP
        else:
            return model


def shutdown(env: DistEnv) -> None:
    """Destroy the process group if this process started one.

    Garbage is collected and the device drained first: a CUDA graph that captured a
    collective (``make_grad_sync``) holds the NCCL communicator, and ``destroy_process_group``
    hung while one was alive (2 H100s, graphed torchrun training). Callers drop their own
    references to such graphs before calling this.
    """
    if env.is_distributed and torch_dist.is_initialized():
        gc.collect()
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
        torch_dist.destroy_process_group()
