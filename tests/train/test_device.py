"""GPU probing: a GPU that torch cannot use is diagnosed, and --device auto says so loudly."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from haloscope.errors import ConfigError
from haloscope.train import device as gpu
from haloscope.train.dist import pick_device

NO_GPU = gpu.GpuProbe(torch_version="2.14.1", torch_cuda="13.0", cuda_available=False)
GPU_NODE = replace(NO_GPU, device_nodes=("/dev/nvidia0",), driver="580.65.06")
H100 = ("sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120")


@pytest.fixture(autouse=True)
def _propagate(monkeypatch):
    # setup_logging (run by CLI tests in this process) stops propagation to caplog's handler
    monkeypatch.setattr(logging.getLogger("haloscope"), "propagate", True)


def test_no_gpu_and_a_usable_gpu_are_not_problems():
    assert gpu.gpu_problem(NO_GPU) is None
    usable = replace(GPU_NODE, cuda_available=True, capabilities=((9, 0),), arch_list=H100)
    assert gpu.gpu_problem(usable) is None


def test_cpu_only_torch_on_a_gpu_machine():
    probe = replace(GPU_NODE, torch_version="2.14.1+cpu", torch_cuda=None)
    msg = gpu.gpu_problem(probe)
    assert "CPU-only build" in msg and "/dev/nvidia0" in msg and "--device cpu" in msg


def test_nvidia_smi_alone_counts_as_a_gpu():
    probe = replace(NO_GPU, nvidia_smi="/usr/bin/nvidia-smi")
    assert "/usr/bin/nvidia-smi" in gpu.gpu_problem(probe)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"driver": "550.54.15"}, "driver 550.54.15 is too old, CUDA 13.0 needs >= 580.65.06"),
        ({"driver": None}, "no NVIDIA kernel driver is loaded"),
        ({"visible_devices": ""}, "CUDA_VISIBLE_DEVICES='' hides every GPU"),
        ({"driver": "590.1"}, "does not initialise"),
    ],
)
def test_cuda_build_that_cannot_initialise_says_why(change, expected):
    msg = gpu.gpu_problem(replace(GPU_NODE, **change))
    assert expected in msg and "haloscope env" in msg


def test_capability_missing_from_the_build():
    probe = replace(GPU_NODE, cuda_available=True, capabilities=((9, 0), (7, 0)), arch_list=H100)
    msg = gpu.gpu_problem(probe)
    assert "GPU 1 (compute capability 7.0)" in msg and "GPU 0" not in msg
    assert "no kernel image" in msg


@pytest.mark.parametrize(
    ("cap", "arch", "ok"),
    [
        ((8, 6), ("sm_80",), True),  # same major, newer minor
        ((9, 0), ("sm_80",), False),  # newer major needs PTX
        ((9, 0), ("compute_80",), True),  # PTX JIT
        ((8, 0), ("compute_90",), False),  # PTX for a newer GPU
        ((9, 0), ("sm_90a",), True),  # arch-specific, exact GPU
        ((10, 0), ("sm_90a",), False),
        ((12, 0), ("sm_100", "sm_120"), True),
        ((7, 5), (), False),
    ],
)
def test_supports_capability(cap, arch, ok):
    assert gpu.supports_capability(cap, arch) is ok


def test_min_driver_for_the_cuda_major():
    assert gpu.min_driver_for("13.0") == "580.65.06"
    assert gpu.min_driver_for("12.8") == "525.60.13"
    assert gpu.min_driver_for(None) is None


def test_auto_warns_loudly_and_runs_on_the_cpu(monkeypatch, caplog):
    probe = replace(GPU_NODE, driver="470.1")
    monkeypatch.setattr(gpu, "probe_gpu", lambda: probe)
    with caplog.at_level(logging.WARNING, logger="haloscope.train.dist"):
        assert pick_device("auto") == torch.device("cpu")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("GPU PRESENT BUT UNUSABLE: ")
    assert "driver 470.1 is too old" in record.getMessage()


def test_auto_is_silent_without_a_gpu(monkeypatch, caplog):
    monkeypatch.setattr(gpu, "probe_gpu", lambda: NO_GPU)
    with caplog.at_level(logging.WARNING):
        assert pick_device("auto") == torch.device("cpu")
    assert not caplog.records


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_explicit_cuda_without_cuda_names_the_reason(monkeypatch):
    monkeypatch.setattr(gpu, "probe_gpu", lambda: replace(GPU_NODE, driver=None))
    with pytest.raises(ConfigError, match="CUDA is not available.*no NVIDIA kernel driver"):
        pick_device("cuda")


def test_probe_gpu_runs_here():
    probe = gpu.probe_gpu()
    assert probe.torch_version == torch.__version__
    assert probe.cuda_available == torch.cuda.is_available()
    if gpu.gpu_problem(probe) is None and probe.cuda_available:
        assert probe.capabilities
