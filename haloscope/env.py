"""``haloscope env``: what this machine offers and what the trainer will use on it.

One report for a bug ticket or a first login on a new cluster: haloscope, Python, the CPU
(architecture, cores), torch and the CUDA / cuDNN / NCCL it was built with, the NVIDIA
driver and every GPU (name, memory, compute capability, whether this torch build has kernels
for it), how this process was launched (torchrun's or Slurm's variables, as
``train.dist.detect_launch`` reads them), and the device, precision and step mode that
``haloscope train`` picks here with its defaults. A GPU that torch cannot use is explained
in one line (``train.device.gpu_problem``). ``--json`` prints the same as one JSON object.
torch is imported only to collect, so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any

from haloscope import __version__
from haloscope.argparse_util import ConfigCLI
from haloscope.errors import HaloscopeError

__all__ = ["CLI", "EnvConfig", "collect", "format_text", "main"]


@dataclass(frozen=True, kw_only=True)
class EnvConfig:
    """What ``haloscope env`` reports, and how."""

    device: str = "auto"
    """The trainer's --device to resolve: auto, cpu, cuda or cuda:N."""
    json: bool = False
    """Print one JSON object instead of the text report."""


CLI = ConfigCLI(
    "env",
    EnvConfig,
    "Print haloscope, Python, CPU, torch/CUDA/cuDNN/NCCL versions, the NVIDIA driver and\n"
    "GPUs, the launcher variables seen (torchrun or Slurm) and the device, precision and\n"
    "step mode the trainer will use here. Warns when a GPU is present but unusable.",
)


def _cudnn(torch: Any) -> str | None:
    version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if not version:
        return None
    # cuDNN 9 encodes major*10000 + minor*100 + patch, cuDNN 8 major*1000 + minor*100 + patch
    major = version // 10000 if version >= 90000 else version // 1000
    return f"{major}.{version % (10000 if version >= 90000 else 1000) // 100}.{version % 100}"


def _nccl(torch: Any) -> str | None:
    try:
        return ".".join(str(x) for x in torch.cuda.nccl.version())
    except (AttributeError, RuntimeError):  # a CPU-only build has no NCCL
        return None


def _gpus(torch: Any, probe: Any, supports: Any) -> list[dict[str, Any]]:
    out = []
    for i, cap in enumerate(probe.capabilities):
        props = torch.cuda.get_device_properties(i)
        out.append(
            {
                "index": i,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{cap[0]}.{cap[1]}",
                "supported": supports(cap, probe.arch_list),
            }
        )
    return out


def _trainer(torch: Any, requested: str, launch: Any) -> dict[str, Any]:
    """Device, precision and step mode under the trainer's defaults on this machine."""
    from haloscope.train.dist import pick_device  # NOTE: lazy: imports torch (env --help)

    try:
        device = pick_device(requested, launch.local_rank, launch.world_size, warn=False)
    except HaloscopeError as exc:
        return {"device": None, "error": str(exc)}
    on_cuda = device.type == "cuda"
    # NOTE: the trainer's auto rules (train/config.py: --precision auto, --step auto):
    # bf16 autocast and one CUDA graph per step on CUDA (under torchrun too: the gradient
    # all-reduce is captured), fp32 and eager on the CPU.
    out = {
        "device": str(device),
        "precision": "bf16" if on_cuda else "fp32",
        "step": "graph" if on_cuda else "eager",
    }
    if on_cuda and torch.cuda.get_device_capability(device) < (8, 0):
        out["note"] = "this GPU has no native bf16 (capability < 8.0): pass --precision fp32"
    return out


def _nvidia(torch: Any) -> dict[str, Any]:
    from haloscope.train import device as gpu  # NOTE: lazy: imports torch (env --help)

    probe = gpu.probe_gpu()
    return {
        "driver": probe.driver,
        "driver_needed": gpu.min_driver_for(probe.torch_cuda),
        "device_nodes": list(probe.device_nodes),
        "nvidia_smi": probe.nvidia_smi,
        "cuda_visible_devices": probe.visible_devices,
        "cuda_available": probe.cuda_available,
        "arch_list": list(probe.arch_list),
        "gpus": _gpus(torch, probe, gpu.supports_capability),
        "problem": gpu.gpu_problem(probe),
    }


def _launch() -> tuple[Any, dict[str, Any]]:
    # NOTE: lazy: train.dist imports torch, kept out of `env --help`
    from haloscope.train.dist import SLURM_VARS, TORCHRUN_VARS, Launch, detect_launch

    try:
        launch, error = detect_launch(), None
    except HaloscopeError as exc:
        launch, error = Launch(), str(exc)
    seen = {k: os.environ[k] for k in (*TORCHRUN_VARS, *SLURM_VARS) if k in os.environ}
    doc = {
        "launcher": launch.launcher,
        "rank": launch.rank,
        "local_rank": launch.local_rank,
        "world_size": launch.world_size,
        "init_method": launch.init_method,
        "error": error,
        "variables": seen,
    }
    return launch, doc


def collect(device: str = "auto") -> dict[str, Any]:
    """Everything ``haloscope env`` reports, as a JSON-ready dict.

    Args:
        device: the trainer's ``--device`` to resolve.
    """
    import torch  # NOTE: lazy: only to collect, never for `env --help`

    launch, launch_doc = _launch()
    nvidia = _nvidia(torch)
    return {
        "haloscope": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "os": {
            "system": platform.system(),
            "release": platform.release(),
            "libc": " ".join(platform.libc_ver()).strip() or None,
        },
        "cpu": {
            "arch": platform.machine(),
            "count": os.cpu_count(),
            "usable": len(os.sched_getaffinity(0)),
        },
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": _cudnn(torch),
            "nccl": _nccl(torch),
        },
        "nvidia": nvidia,
        "launch": launch_doc,
        "trainer": _trainer(torch, device, launch),
    }


def _launch_line(launch: dict[str, Any]) -> str:
    if launch["error"]:
        return f"cannot start: {launch['error']}"
    if launch["launcher"] == "single":
        return "single process (rank 0 of 1)"
    where = f", rendezvous {launch['init_method']}" if launch["init_method"] else ""
    return (
        f"{launch['launcher']}: rank {launch['rank']} of {launch['world_size']}, "
        f"local rank {launch['local_rank']}{where}"
    )


def format_text(info: dict[str, Any]) -> str:
    """The human-readable report of ``collect``'s dict."""
    t, nv, cpu = info["torch"], info["nvidia"], info["cpu"]
    driver = nv["driver"] or "none loaded"
    if t["cuda"]:
        driver += f" (CUDA {t['cuda']} needs >= {nv['driver_needed']})"
    lines = [
        f"haloscope  {info['haloscope']}",
        f"python     {info['python']['version']} ({info['python']['executable']})",
        f"os         {info['os']['system']} {info['os']['release']}, {info['os']['libc']}",
        f"cpu        {cpu['arch']}, {cpu['count']} cores ({cpu['usable']} usable by this process)",
        f"torch      {t['version']}, CUDA {t['cuda'] or 'none (CPU-only build)'}, "
        f"cuDNN {t['cudnn'] or '-'}, NCCL {t['nccl'] or '-'}",
        f"archs      {', '.join(nv['arch_list']) or '-'}",
        f"driver     {driver}",
        f"gpus       {len(nv['gpus'])} visible to torch"
        + (
            f" (CUDA_VISIBLE_DEVICES={nv['cuda_visible_devices']})"
            if nv["cuda_visible_devices"] is not None
            else ""
        ),
    ]
    for g in nv["gpus"]:
        ok = "ok" if g["supported"] else "NOT IN THIS TORCH BUILD"
        lines.append(
            f"  gpu {g['index']:<4} {g['name']}, {g['memory_gib']} GiB, "
            f"capability {g['capability']} ({ok})"
        )
    lines.append(f"launch     {_launch_line(info['launch'])}")
    for key, value in info["launch"]["variables"].items():
        lines.append(f"  {key}={value}")
    tr = info["trainer"]
    if tr["device"] is None:
        lines.append(f"trainer    cannot run here: {tr['error']}")
    else:
        lines.append(
            f"trainer    device {tr['device']}, precision {tr['precision']}, "
            f"step {tr['step']} (the defaults: --precision auto --step auto)"
        )
        if "note" in tr:
            lines.append(f"  note     {tr['note']}")
    if nv["problem"]:
        lines.append(f"WARNING    GPU PRESENT BUT UNUSABLE: {nv['problem']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry point of ``haloscope env``."""
    args = CLI.parse(argv)
    info = collect(args.device)
    print(json.dumps(info, indent=1) if args.json else format_text(info))
    return 0
