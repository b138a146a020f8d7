"""nn.Linear with a faster path for decoding one token at a time on a CPU.

y = x W^T + b reads the whole weight matrix for every token. With one or two rows of x (a decoding step at
batch size 1 or 2) the product is a matrix-vector product limited by how fast W streams from memory, and
on CPUs the BLAS libraries stream a row-major (in, out) matrix about twice as fast as the (out, in) layout
nn.Linear stores. So, when no gradient is needed and x has few rows, this layer multiplies by a transposed
copy of W, made on first use and remade whenever W changes (an optimiser step, load_state_dict).
GPUs take the ordinary F.linear path; the numbers are the same either way.

Large fp32 products on a CPU (training, encoding whole batches) go through `linear`, which can run the
forward product and the input gradient in oneDNN instead of the BLAS library torch calls for F.linear
(MKL in the official wheels). On an AMD EPYC (Zen 3) MKL reaches about 100 GFLOP/s on 2 cores for the
shapes of a Transformer layer (4000 x 256 x 1024) where oneDNN reaches 115-135 (inside a training step
the gain shrinks to 5-20% per product); on batches of under ~2000 rows or with a side under 256 MKL is as
fast or faster. Which library wins depends on the CPU, so the
choice is measured once per process (`onednn_is_faster`); TFORMER_CPU_MATMUL=onednn or =blas fixes it.
The weight gradient stays with torch (MKL), which is faster there on every shape measured.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

FAST_ROWS = 4  # measured: the transposed layout wins up to about 4 rows, and is no slower beyond
ONEDNN_MIN_ROWS = 2048  # oneDNN only for products with at least this many rows ...
ONEDNN_MIN_SIDE = 256  # ... input and output widths of at least this much ...
ONEDNN_MAX_SIDE = 4096  # ... and at most this much: a vocabulary projection (4000 x 256 -> 8000) measured
# 1.5x slower in oneDNN inside a training step, though not in isolation


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (M, K) @ weight (N, K)^T + bias in oneDNN (the primitive torch.compile's CPU backend uses)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


_onednn_choice: bool | None = None


def onednn_is_faster() -> bool:
    """Whether oneDNN beats torch's BLAS on this CPU for a Transformer-layer product, measured once.

    TFORMER_CPU_MATMUL=onednn or =blas skips the measurement. Either answer gives the same numbers (to
    float rounding); a wrong one only costs speed."""
    global _onednn_choice
    if _onednn_choice is None:
        forced = os.environ.get("TFORMER_CPU_MATMUL", "auto").lower()
        if not torch.backends.mkldnn.is_available() or forced == "blas":
            _onednn_choice = False
        elif forced == "onednn":
            _onednn_choice = True
        else:
            _onednn_choice = _measure_onednn_speedup() > 1.05
    return _onednn_choice


def _measure_onednn_speedup(rows: int = 2048, d_in: int = 256, d_out: int = 1024, repeats: int = 5) -> float:
    """Median over interleaved repeats of BLAS time / oneDNN time for one forward product (~0.1 s)."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, d_in, generator=g), torch.randn(d_out, d_in, generator=g)
    b = torch.zeros(d_out)
    try:
        _onednn_linear(x, w, b)  # creates and caches the primitive
    except RuntimeError:  # an op this build lacks
        return 0.0
    F.linear(x, w, b)
    ratios = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        F.linear(x, w, b)
        t1 = time.perf_counter()
        _onednn_linear(x, w, b)
        t2 = time.perf_counter()
        ratios.append((t1 - t0) / max(t2 - t1, 1e-9))
    return statistics.median(ratios)


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b with the forward product and d x in oneDNN, d W and d b in torch."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # d x = grad W: oneDNN wants the (in, out) matrix as its "weight"; the copy is a few MB at most
            grad_x = _onednn_linear(grad, weight.t().contiguous(), None)
        if ctx.needs_input_grad[1]:
            grad_w = grad.t().mm(x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias), through oneDNN for large fp32 products on CPUs where that is faster."""
    d_out, d_in = weight.shape
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and ONEDNN_MIN_SIDE <= min(d_in, d_out) and max(d_in, d_out) <= ONEDNN_MAX_SIDE
            and x.numel() >= ONEDNN_MIN_ROWS * d_in
            and not torch.is_autocast_enabled("cpu") and onednn_is_faster()):
        rows = x.reshape(-1, d_in).contiguous()
        y = _OneDNNLinearFunction.apply(rows, weight, bias)
        return y.view(*x.shape[:-1], d_out)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    _decode_weight: Tensor | None = None
    _decode_key: tuple | None = None

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and x.numel() <= FAST_ROWS * self.in_features and not torch.is_grad_enabled():
            return self._forward_few_rows(x)
        return linear(x, self.weight, self.bias)

    def _forward_few_rows(self, x: Tensor) -> Tensor:
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype)
        if self._decode_key != key:
            with torch.no_grad():
                self._decode_weight = w.detach().t().contiguous()  # (in, out)
            self._decode_key = key
        rows = x.reshape(-1, self.in_features)
        if self.bias is not None:
            y = torch.addmm(self.bias, rows, self._decode_weight)
        else:
            y = torch.mm(rows, self._decode_weight)
        return y.view(*x.shape[:-1], self.out_features)
