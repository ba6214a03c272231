"""What the machine offers for CUDA, and why torch might not be able to use it.

``probe_gpu`` gathers the facts (torch's CUDA build, whether CUDA initialises, NVIDIA device
nodes, ``nvidia-smi``, the kernel driver's version, each GPU's compute capability and the
architectures this torch was compiled for); ``gpu_problem`` turns them into one diagnosis,
or None when a GPU is usable or there is none. ``train.dist`` warns with it when
``--device auto`` resolves (a GPU node that silently trains on the CPU is the failure this
guards against) and ``haloscope env`` prints it.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "GpuProbe",
    "probe_gpu",
    "gpu_problem",
    "supports_capability",
    "min_driver_for",
]

# the oldest Linux driver of each CUDA major's first release (NVIDIA's CUDA release notes);
# a datacenter GPU may run newer CUDA on an older driver through the cuda-compat package
_MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
_DRIVER_FILE = Path("/proc/driver/nvidia/version")


@dataclass(frozen=True)
class GpuProbe:
    """Facts about CUDA on this machine, as seen by this process.

    Attributes:
        torch_version: ``torch.__version__``.
        torch_cuda: the CUDA version torch was built with; None for a CPU-only build.
        cuda_available: ``torch.cuda.is_available()``.
        device_nodes: NVIDIA GPU device files (``/dev/nvidia0``, ...).
        nvidia_smi: path of ``nvidia-smi`` on PATH, or None.
        driver: the loaded kernel driver's version, or None when none is loaded.
        capabilities: (major, minor) of each GPU torch sees (empty unless CUDA is available).
        arch_list: the architectures torch was compiled for (``sm_90``, ``compute_90``, ...;
            empty for a CPU-only build).
        visible_devices: ``CUDA_VISIBLE_DEVICES``, or None when unset.
    """

    torch_version: str
    torch_cuda: str | None
    cuda_available: bool
    device_nodes: tuple[str, ...] = ()
    nvidia_smi: str | None = None
    driver: str | None = None
    capabilities: tuple[tuple[int, int], ...] = ()
    arch_list: tuple[str, ...] = ()
    visible_devices: str | None = None

    @property
    def has_nvidia_gpu(self) -> bool:
        """An NVIDIA GPU seems to be installed (device node or nvidia-smi)."""
        return bool(self.device_nodes) or self.nvidia_smi is not None


def _driver_version() -> str | None:
    try:
        text = _DRIVER_FILE.read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else None


def probe_gpu() -> GpuProbe:
    """Gather the facts of ``GpuProbe`` (initialises CUDA when it is available)."""
    available = torch.cuda.is_available()
    caps: tuple[tuple[int, int], ...] = ()
    if available:
        caps = tuple(torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))
    arch = tuple(torch.cuda.get_arch_list()) if torch.version.cuda else ()
    nodes = sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))
    return GpuProbe(
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
        cuda_available=available,
        device_nodes=tuple(nodes),
        nvidia_smi=shutil.which("nvidia-smi"),
        driver=_driver_version(),
        capabilities=caps,
        arch_list=arch,
        visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )


def supports_capability(capability: tuple[int, int], arch_list: tuple[str, ...]) -> bool:
    """Whether a build for ``arch_list`` runs on a GPU of ``capability``.

    A ``sm_XY`` binary runs on the same major with an equal or higher minor (``sm_80`` on an
    8.6 GPU); ``compute_XY`` PTX is compiled by the driver for any GPU of ``X.Y`` or newer.
    The architecture-specific ``sm_90a``/``sm_100a`` builds run only on that exact GPU.
    """
    major, minor = capability
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+?)(\d)([af]?)", arch)
        if match is None:
            continue
        kind, suffix = match.group(1), match.group(4)
        a_major, a_minor = int(match.group(2)), int(match.group(3))
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
        same_family = a_major == major and a_minor <= minor
        if kind == "sm" and same_family and (not suffix or a_minor == minor):
            return True
    return False


def min_driver_for(torch_cuda: str | None) -> str | None:
    """The oldest driver that runs a build for CUDA ``torch_cuda`` (``"13.0"`` -> 580.65.06)."""
    if torch_cuda is None:
        return None
    return _MIN_DRIVER.get(int(torch_cuda.split(".")[0]))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


def _where(probe: GpuProbe) -> str:
    found = list(probe.device_nodes[:2]) + ([probe.nvidia_smi] if probe.nvidia_smi else [])
    return ", ".join(found)


def gpu_problem(probe: GpuProbe) -> str | None:
    """One line on why an NVIDIA GPU here cannot be used by torch, or None if it can (or none).

    Args:
        probe: the facts, from ``probe_gpu``.
    """
    if probe.cuda_available:
        bad = [
            f"GPU {i} (compute capability {maj}.{mnr})"
            for i, (maj, mnr) in enumerate(probe.capabilities)
            if not supports_capability((maj, mnr), probe.arch_list)
        ]
        if not bad:
            return None
        return (
            f"{', '.join(bad)} is not among the architectures torch {probe.torch_version} was "
            f"built for ({', '.join(probe.arch_list) or 'none'}): CUDA kernels will fail with "
            "'no kernel image is available'; install a torch build for this GPU"
        )
    if not probe.has_nvidia_gpu:
        return None
    if probe.torch_cuda is None:
        return (
            f"this machine has an NVIDIA GPU ({_where(probe)}) but torch {probe.torch_version} "
            "is a CPU-only build: install a CUDA build of torch (`make` installs one; in a "
            "container use the image's torch), or pass --device cpu to run on the CPU on purpose"
        )
    if probe.visible_devices is not None and probe.visible_devices.strip() in ("", "-1"):
        reason = f"CUDA_VISIBLE_DEVICES={probe.visible_devices!r} hides every GPU"
    elif probe.driver is None:
        reason = "no NVIDIA kernel driver is loaded (in a container: start it with --nv / --gpus)"
    else:
        need = min_driver_for(probe.torch_cuda)
        if need is not None and _version(probe.driver) < _version(need):
            reason = f"driver {probe.driver} is too old, CUDA {probe.torch_cuda} needs >= {need}"
        else:
            reason = (
                f"driver {probe.driver} is loaded but CUDA does not initialise (device "
                "permissions, a GPU in a bad state: see nvidia-smi)"
            )
    return (
        f"this machine has an NVIDIA GPU ({_where(probe)}) but torch {probe.torch_version} "
        f"(CUDA {probe.torch_cuda}) cannot use it: {reason}. `haloscope env` shows the details; "
        "pass --device cpu to run on the CPU on purpose"
    )
