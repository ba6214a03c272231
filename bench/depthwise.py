"""An opt-in Triton depthwise 7x7 convolution for ConvNeXt blocks (issue 9, optional part).

cudnn runs the bf16 channels-last depthwise 7x7 of ConvNeXt as ~105 small kernels per call;
inside a CUDA graph it still takes 28% of the training step at 64x64 (``docs/gpu_notes.md``).
Here the same convolution (same weights, zero padding 3, stride 1, fp32 accumulation of
bf16 products, bf16 out under autocast) is three Triton kernels on channels-last tensors:

- forward: one program per (image, pixel tile, channel tile), 49 shifted loads;
- input gradient: the forward kernel on the output gradient with the kernel flipped;
- weight gradient: one program per (image chunk, channel tile, tap) writing fp32 partial
  sums, reduced by one ``sum`` (deterministic, no atomics); bias gradient by ``sum``.

``use_triton_depthwise(model)`` swaps every depthwise 7x7 ``nn.Conv2d`` for
``Depthwise7x7``, which keeps the same ``weight``/``bias`` parameters (state-dict keys and
optimiser groups unchanged) and falls back to ``F.conv2d`` off CUDA or without Triton.

Measured on an H100 (``bench/results/gpu_triton_dw.json``): correct (matches cudnn in fp32
and bf16) but *slower* than cudnn inside a graph (6.7 vs 4.2 ms per step at batch 256),
so nothing uses it by default; ``haloscope bench gpu`` keeps it as the ``graph_tdw`` row.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:  # Triton ships with CUDA builds of torch; CPU-only installs may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

__all__ = [
    "Depthwise7x7",
    "depthwise7x7",
    "use_triton_depthwise",
    "depthwise_probe",
    "TRITON_AVAILABLE",
]

TRITON_AVAILABLE = triton is not None
_K = 7

if TRITON_AVAILABLE:

    @triton.jit
    def _dw_fwd_kernel(
        x_ptr,
        wt_ptr,
        b_ptr,
        y_ptr,
        C,
        H,
        W,
        HAS_BIAS: tl.constexpr,
        FLIP: tl.constexpr,
        K: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        """y[n,p,c] = sum_t x[n, p + shift(t), c] * wt[t, c] (+ b[c]); NHWC, zero padding."""
        n, pid_p, pid_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_p, mask_c = offs_p < H * W, offs_c < C
        h, w = offs_p // W, offs_p % W
        base = n.to(tl.int64) * H * W * C
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for dy in tl.static_range(K):
            for dx in tl.static_range(K):
                hh, ww = h + (dy - K // 2), w + (dx - K // 2)
                ok = mask_p & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                ptr = x_ptr + base + (hh * W + ww)[:, None] * C + offs_c[None, :]
                xv = tl.load(ptr, mask=ok[:, None] & mask_c[None, :], other=0.0)
                tap = (K * K - 1 - (dy * K + dx)) if FLIP else (dy * K + dx)
                wv = tl.load(wt_ptr + tap * C + offs_c, mask=mask_c, other=0.0)
                acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
        out = y_ptr + base + offs_p[:, None] * C + offs_c[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])

    @triton.jit
    def _dw_wgrad_kernel(
        x_ptr,
        g_ptr,
        part_ptr,
        N,
        C,
        H,
        W,
        IMGS: tl.constexpr,
        K: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        """part[chunk, t, c] = sum over the chunk's images and pixels of g * shifted x."""
        pid_n, pid_c, t = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        dy, dx = t // K - K // 2, t % K - K // 2
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for i in range(IMGS):
            n = pid_n * IMGS + i
            base = n.to(tl.int64) * H * W * C
            for p0 in range(0, H * W, BLOCK_P):
                offs_p = p0 + tl.arange(0, BLOCK_P)
                mask_p = (offs_p < H * W) & (n < N)
                h, w = offs_p // W, offs_p % W
                hh, ww = h + dy, w + dx
                ok = mask_p & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                g = tl.load(
                    g_ptr + base + offs_p[:, None] * C + offs_c[None, :],
                    mask=ok[:, None] & mask_c[None, :],
                    other=0.0,
                )
                xv = tl.load(
                    x_ptr + base + (hh * W + ww)[:, None] * C + offs_c[None, :],
                    mask=ok[:, None] & mask_c[None, :],
                    other=0.0,
                )
                acc += tl.sum(g.to(tl.float32) * xv.to(tl.float32), axis=0)
        tl.store(part_ptr + (pid_n * K * K + t) * C + offs_c, acc, mask=mask_c)


def _blocks(hw: int, c: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C): up to 64 pixels and ~4k elements per program."""
    block_p = min(64, triton.next_power_of_2(hw))
    block_c = min(triton.next_power_of_2(c), max(32, 4096 // block_p), 128)
    return block_p, block_c


def _conv(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None, flip: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    bp, bc = _blocks(h * w, c)
    grid = (n, triton.cdiv(h * w, bp), triton.cdiv(c, bc))
    _dw_fwd_kernel[grid](
        x,
        wt,
        bias if bias is not None else wt,
        y,
        c,
        h,
        w,
        HAS_BIAS=bias is not None,
        FLIP=flip,
        K=_K,
        BLOCK_P=bp,
        BLOCK_C=bc,
    )
    return y


def _wgrad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    imgs = max(1, min(16, 4096 // (h * w)))
    bp, bc = _blocks(h * w, c)
    chunks = triton.cdiv(n, imgs)
    part = torch.empty(chunks, _K * _K, c, device=x.device, dtype=torch.float32)
    _dw_wgrad_kernel[(chunks, triton.cdiv(c, bc), _K * _K)](
        x, g, part, n, c, h, w, IMGS=imgs, K=_K, BLOCK_P=bp, BLOCK_C=bc
    )
    return part.sum(0)  # (49, C) fp32


class _Depthwise7x7Fn(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.bfloat16)
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous(memory_format=torch.channels_last)
        c = x.shape[1]
        wt = weight.reshape(c, _K * _K).t().contiguous()  # (49, C): coalesced per tap
        ctx.save_for_backward(x, wt)
        ctx.has_bias, ctx.w_shape = bias is not None, weight.shape
        return _conv(x, wt, bias, flip=False)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:  # type: ignore[override]
        x, wt = ctx.saved_tensors
        gy = gy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        gx = _conv(gy, wt, None, flip=True)
        gw = _wgrad(x, gy).t().reshape(ctx.w_shape).to(wt.dtype)
        gb = gy.sum((0, 2, 3), dtype=torch.float32).to(wt.dtype) if ctx.has_bias else None
        return gx, gw, gb


def depthwise7x7(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=3, groups=C)`` through Triton on CUDA.

    Args:
        x: (N, C, H, W), any memory format (made channels-last).
        weight: (C, 1, 7, 7).
        bias: (C,) or None.

    Returns:
        (N, C, H, W) channels-last; bf16 under CUDA autocast, else x's dtype.
    """
    if not (TRITON_AVAILABLE and x.is_cuda):
        return F.conv2d(x, weight, bias, padding=_K // 2, groups=x.shape[1])
    return _Depthwise7x7Fn.apply(x, weight, bias)


class Depthwise7x7(nn.Module):
    """Drop-in for a depthwise 7x7 ``nn.Conv2d``; shares its ``weight`` and ``bias``."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise7x7(x, self.weight, self.bias)


def _is_depthwise7x7(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (_K, _K)
        and m.stride == (1, 1)
        and m.padding == (_K // 2, _K // 2)
        and m.dilation == (1, 1)
        and m.groups == m.in_channels == m.out_channels
        and m.padding_mode == "zeros"
    )


def use_triton_depthwise(model: nn.Module) -> int:
    """Replace every depthwise 7x7 conv of ``model`` in place; returns how many."""
    targets = [(name, m) for name, m in model.named_modules() if _is_depthwise7x7(m)]
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Depthwise7x7(conv))
    return len(targets)


def _time_graph(fn: Callable[[], Any], reps: int = 20) -> float:
    """Mean ms of ``fn`` replayed from a CUDA graph (launch cost removed)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def _dw_fwd_bwd(
    x: torch.Tensor, w: torch.Tensor, gy: torch.Tensor, dtype: torch.dtype, layout: str
) -> None:
    """Depthwise 7x7 conv forward + backward of one block, bf16 channels-last in and out."""
    if layout == "triton":
        y = depthwise7x7(x, w.to(dtype), None)
    else:
        xi = x.contiguous() if layout == "nchw" else x
        y = F.conv2d(xi.to(dtype), w.to(dtype), padding=3, groups=x.shape[1])
    y = y.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    torch.autograd.backward(y, gy, inputs=[x, w])


def depthwise_probe(batch_size: int) -> list[dict[str, Any]]:
    """ms per training step spent in the 18 depthwise 7x7 convs (fwd + bwd), per variant.

    Variants keep the math (same weights, same conv): input layout NHWC (as the model runs)
    or NCHW (with the layout conversions counted), bf16 or fp32, or this module's Triton
    kernels. (cudnn.benchmark made no difference in the first run: docs/gpu_notes.md.)
    """
    stages = ((96, 16, 3), (192, 8, 3), (384, 4, 9), (768, 2, 3))  # (C, H, blocks)
    rows = []
    variants = [
        ("bfloat16", "nhwc"),
        ("bfloat16", "nchw"),
        ("float32", "nhwc"),
        ("float32", "nchw"),
    ]
    if TRITON_AVAILABLE:
        variants.append(("bfloat16", "triton"))
    for dtype_name, layout in variants:
        dtype = getattr(torch, dtype_name)
        total = 0.0
        for c, h, blocks in stages:
            x = torch.randn(batch_size, c, h, h, device="cuda").to(
                memory_format=torch.channels_last
            )
            x = x.to(torch.bfloat16).requires_grad_()
            w = (0.1 * torch.randn(c, 1, 7, 7, device="cuda")).requires_grad_()
            gy = torch.randn(batch_size, c, h, h, device="cuda", dtype=torch.bfloat16)

            total += blocks * _time_graph(partial(_dw_fwd_bwd, x, w, gy, dtype, layout))
        rows.append(
            {
                "batch_size": batch_size,
                "dtype": dtype_name,
                "layout": layout,
                "ms_per_step": round(total, 3),
            }
        )
    return rows
