"""nn.Linear and F.linear with faster CPU paths: decoding a few rows, and large products in oneDNN.

y = x W^T + b reads the whole weight matrix for every token. With one or two rows of x (a decoding step at
batch size 1 or 2) the product is a matrix-vector product limited by how fast W streams from memory, and
on CPUs the BLAS libraries stream a row-major (in, out) matrix about twice as fast as the (out, in) layout
nn.Linear stores. So, when no gradient is needed and x has few rows, this layer multiplies by a transposed
copy of W, made on first use and remade whenever W changes (an optimiser step, load_state_dict).
GPUs take the ordinary F.linear path; the numbers are the same either way.

Large fp32 products on a CPU (training, encoding whole batches) go through `linear`, which can run the
forward product and the input gradient in oneDNN instead of the BLAS library torch calls for F.linear
(MKL in the official wheels), where that is faster: see `onednn_is_faster`. Only products of at least
ONEDNN_MIN_ROWS rows with both sides between ONEDNN_MIN_SIDE and ONEDNN_MAX_SIDE qualify; smaller ones
were as fast or faster in MKL. The weight gradient stays with torch (MKL), faster on every shape measured.
"""

from __future__ import annotations

import os
import warnings

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
    """Whether to send large fp32 CPU products to oneDNN: on AMD CPUs, unless TFORMER_CPU_MATMUL says.

    MKL, the BLAS in torch's official wheels, is Intel's and picks slower kernels on other vendors' CPUs;
    measured on an AMD EPYC (Zen 3) in isolation: 1.07-1.36x for oneDNN on the forward and input-gradient
    products of a Transformer layer, and 2% of a whole translation training step (A/B, 40 interleaved
    pairs). On Intel CPUs MKL is kept (not measured here). TFORMER_CPU_MATMUL=onednn or =blas decides
    instead. Either answer gives the same numbers to float rounding; a wrong one only costs speed."""
    global _onednn_choice
    if _onednn_choice is None:
        setting = os.environ.get("TFORMER_CPU_MATMUL", "auto").lower()
        if not torch.backends.mkldnn.is_available() or setting == "blas":
            _onednn_choice = False
        elif setting == "onednn":
            _onednn_choice = True
        else:
            if setting != "auto":
                warnings.warn(f"TFORMER_CPU_MATMUL={setting!r}: expected auto, onednn or blas; using auto",
                              stacklevel=2)
            _onednn_choice = _cpu_vendor() == "AuthenticAMD"
    return _onednn_choice


def _cpu_vendor() -> str:
    """The vendor_id of /proc/cpuinfo (Linux), else ''."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


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
