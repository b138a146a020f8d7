"""nn.Linear and F.linear with faster CPU paths: decoding a few rows, large products in oneDNN, and the
gradients of vocabulary-sized products in blocks.

y = x W^T + b reads the whole weight matrix for every token. With one or two rows of x (a decoding step at
batch size 1 or 2) the product is a matrix-vector product limited by how fast W streams from memory, and
on CPUs the BLAS libraries stream a row-major (in, out) matrix about twice as fast as the (out, in) layout
nn.Linear stores. So, inside a decoding loop (`transposed_weights`: generation, greedy and beam search), when
no gradient is needed and x has few rows, this layer multiplies by a transposed copy of W, made on its first
use in the loop and freed when the loop ends. Weights cannot change during one loop, and any change between
loops (an optimiser step, load_state_dict, an edit through .data that no version counter sees) is read
afresh. GPUs take the ordinary F.linear path; the numbers are the same either way.

Large fp32 products on a CPU (training, encoding whole batches) go through `linear`, which can run the
forward product and the input gradient in oneDNN instead of the BLAS library torch calls for F.linear
(MKL in the official wheels), where that is faster: see `tuned_cpu_products`. Only products of at least
ONEDNN_MIN_ROWS rows with both sides between ONEDNN_MIN_SIDE and ONEDNN_MAX_SIDE qualify; smaller ones
were as fast or faster in MKL. The weight gradient stays with torch (MKL), faster on every shape measured.

Products wider than ONEDNN_MAX_SIDE (a vocabulary projection: 4000 rows x 256 -> 8000 words) stay in MKL,
but their two gradient products run in blocks of GRAD_BLOCK rows: d x = grad W over 1024 rows of grad at a
time, d W = grad^T x over 1024 output words at a time. MKL runs each about 1.15-1.3x faster that way than as one
call (measured on an AMD EPYC, Zen 3, 2 threads); the forward product gained nothing from blocks.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
import weakref
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

FAST_ROWS = 4  # measured: the transposed layout wins up to about 4 rows, and is no slower beyond
ONEDNN_MIN_ROWS = 2048  # oneDNN only for products with at least this many rows ...
ONEDNN_MIN_SIDE = 256  # ... input and output widths of at least this much ...
ONEDNN_MAX_SIDE = 4096  # ... and at most this much: a vocabulary projection (4000 x 256 -> 8000) measured
# 1.5x slower in oneDNN inside a training step, though not in isolation
GRAD_BLOCK = 1024  # rows per product in the blocked gradients of wider products


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (M, K) @ weight (N, K)^T + bias in oneDNN (the primitive torch.compile's CPU backend uses)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


_onednn_op: bool | None = None


def _onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN and the (private) op above; a build or version without it keeps
    F.linear, which gives the same numbers."""
    global _onednn_op
    if _onednn_op is None:
        _onednn_op = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    return _onednn_op


_tuned_choice: bool | None = None


def tuned_cpu_products() -> bool:
    """Whether large fp32 CPU products take the paths tuned here: on AMD CPUs, unless TFORMER_CPU_MATMUL says.

    Two paths, both measured on an AMD EPYC (Zen 3): layer-sized products in oneDNN (1.07-1.36x faster than
    MKL in isolation for the forward and input-gradient products, 2% of a whole translation training step),
    and the gradients of vocabulary-sized products in blocks (3% of the same step). MKL, the BLAS in torch's
    official wheels, is Intel's and picks slower kernels on other vendors' CPUs. On Intel CPUs torch's own
    paths are kept (not measured here). TFORMER_CPU_MATMUL=onednn (tuned) or =blas (torch's own) decides
    instead. Either answer gives the same numbers to float rounding; a wrong one only costs speed."""
    global _tuned_choice
    if _tuned_choice is None:
        setting = os.environ.get("TFORMER_CPU_MATMUL", "auto").lower()
        if setting == "blas":
            _tuned_choice = False
        elif setting == "onednn":
            _tuned_choice = True
        else:
            if setting != "auto":
                warnings.warn(f"TFORMER_CPU_MATMUL={setting!r}: expected auto, onednn or blas; using auto",
                              stacklevel=2)
            _tuned_choice = _cpu_vendor() == "AuthenticAMD"
    return _tuned_choice


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


def _save_for_linear_grads(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _linear_grads(ctx, grad: Tensor, grad_input: Callable, grad_weight: Callable):
    """(d x, d W, d b) of y = x W^T + b for 2-D x: grad_input(grad, W) and grad_weight(grad, x) as given."""
    x, weight = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = grad_input(grad, weight) if ctx.needs_input_grad[0] else None
    grad_w = grad_weight(grad, x) if ctx.needs_input_grad[1] else None
    grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return grad_x, grad_w, grad_b


def _onednn_grad_input(grad: Tensor, weight: Tensor) -> Tensor:
    """d x = grad W in oneDNN, which wants the (in, out) matrix as its "weight"; the copy is a few MB at most."""
    return _onednn_linear(grad, weight.t().contiguous(), None)


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b with the forward product and d x in oneDNN, d W and d b in torch."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        _save_for_linear_grads(ctx, x, weight, bias)
        return _onednn_linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        return _linear_grads(ctx, grad, _onednn_grad_input, lambda g, x: g.t().mm(x))


def _blocked_grad_input(grad: Tensor, weight: Tensor) -> Tensor:
    """d x = grad W, GRAD_BLOCK rows of grad at a time."""
    grad_x = grad.new_empty(grad.size(0), weight.size(1))
    for i in range(0, grad.size(0), GRAD_BLOCK):
        torch.mm(grad[i:i + GRAD_BLOCK], weight, out=grad_x[i:i + GRAD_BLOCK])
    return grad_x


def _blocked_grad_weight(grad: Tensor, x: Tensor) -> Tensor:
    """d W = grad^T x, GRAD_BLOCK output rows (words) at a time."""
    grad_w = grad.new_empty(grad.size(1), x.size(1))
    for j in range(0, grad.size(1), GRAD_BLOCK):
        torch.mm(grad[:, j:j + GRAD_BLOCK].t(), x, out=grad_w[j:j + GRAD_BLOCK])
    return grad_w


class _BlockedGradLinearFunction(torch.autograd.Function):
    """y = x W^T + b as F.linear computes it, with d x and d W each computed in blocks of GRAD_BLOCK rows."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        _save_for_linear_grads(ctx, x, weight, bias)
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        return _linear_grads(ctx, grad, _blocked_grad_input, _blocked_grad_weight)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias); large fp32 CPU products take the tuned paths where they are faster."""
    d_out, d_in = weight.shape
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and ONEDNN_MIN_SIDE <= min(d_in, d_out) and x.numel() >= ONEDNN_MIN_ROWS * d_in
            and not torch.is_autocast_enabled("cpu") and tuned_cpu_products()):
        function = None
        if max(d_in, d_out) <= ONEDNN_MAX_SIDE:
            if _onednn_linear_available():
                function = _OneDNNLinearFunction
        elif d_out > ONEDNN_MAX_SIDE and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            function = _BlockedGradLinearFunction
        if function is not None:
            y = function.apply(x.reshape(-1, d_in).contiguous(), weight, bias)
            return y if x.dim() == 2 else y.view(*x.shape[:-1], d_out)
    return F.linear(x, weight, bias)


class _DecodingLoops(threading.local):
    """How many decoding loops this thread is inside, and the layers that made a transposed copy in them."""
    depth = 0
    layers: weakref.WeakSet | None = None


_decoding = _DecodingLoops()


@contextlib.contextmanager
def transposed_weights() -> Iterator[None]:
    """Inside it (also as a decorator), Linear layers multiply a few rows by a transposed copy of their weight,
    made on first use; leaving the outermost one frees the copies."""
    if _decoding.depth == 0:
        _decoding.layers = weakref.WeakSet()
    _decoding.depth += 1
    try:
        yield
    finally:
        _decoding.depth -= 1
        if _decoding.depth == 0:
            for layer in list(_decoding.layers):
                layer._decode = None
            _decoding.layers = None


class Linear(nn.Linear):
    # (key of the weight it was made from, the transposed copy): one attribute, read and replaced whole, so
    # that another thread's loop ending (which drops it) never leaves a key without its copy.
    _decode: tuple[tuple, Tensor] | None = None

    @property
    def _decode_weight(self) -> Tensor | None:
        """The transposed copy this decoding loop uses, None outside one."""
        decode = self._decode
        return None if decode is None else decode[1]

    def forward(self, x: Tensor) -> Tensor:
        if (_decoding.depth and x.device.type == "cpu" and x.numel() <= FAST_ROWS * self.in_features
                and not torch.is_grad_enabled()):
            return self._forward_few_rows(x)
        return linear(x, self.weight, self.bias)

    def _forward_few_rows(self, x: Tensor) -> Tensor:
        w = self.weight
        # A weight made under inference_mode (a model built or loaded there) has no version counter; such a
        # tensor can only change in place under inference_mode, and weights do not change within one loop.
        key = (w.data_ptr(), -1 if w.is_inference() else w._version, w.dtype)
        decode = self._decode
        if decode is None or decode[0] != key:
            with torch.no_grad():
                decode = (key, w.detach().t().contiguous())  # (in, out)
            self._decode = decode
            _decoding.layers.add(self)
        rows = x.reshape(-1, self.in_features)
        if self.bias is not None:
            y = torch.addmm(self.bias, rows, decode[1])
        else:
            y = torch.mm(rows, decode[1])
        return y.view(*x.shape[:-1], self.out_features)
