"""The feed-forward activations: ReLU (the Transformer paper), GELU (BERT, exact, with erf) and GELU's tanh
approximation (GPT-2: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))).

The tanh form is rewritten with tanh(z) = 2 sigmoid(2z) - 1 as

    gelu_tanh(x) = x * sigmoid(u),   u = 2 sqrt(2/pi) (x + 0.044715 x^3)

the same function (within float rounding), because on a CPU torch's tanh, and with it its tanh-GELU kernel,
runs about three times slower than its sigmoid. For activations that stay in cache a handful of cheap
element-wise passes beat the one slow kernel (forward + backward of a 768 x 512 activation on 2 cores:
1.2-1.4 ms against 2.0-2.3 ms; about 3% of a 4-layer, 128-wide GPT training step). Larger ones are limited by
memory traffic, where one pass wins, and tiny ones by call overhead: both, and GPUs, keep torch's kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_C1 = 2 * math.sqrt(2 / math.pi)  # u = _C1 x + _C3 x^3
_C3 = _C1 * 0.044715


_C1_TENSOR = torch.tensor(_C1, dtype=torch.float64)  # 0-dim: torch.addcmul starts from it; takes x's dtype


def _sigmoid_u(x: Tensor) -> Tensor:
    """sigmoid(_C1 x + _C3 x^3) in one new buffer, in three passes: (_C1 + _C3 x^2), times x, sigmoid."""
    return torch.addcmul(_C1_TENSOR, x, x, value=_C3).mul_(x).sigmoid_()


class _GeluTanh(torch.autograd.Function):
    """x sigmoid(u(x)); d/dx = s + s x u'(x) (1 - s), with s = sigmoid(u) kept from the forward.

    Every pass over the activation counts: inside a training step it has just left the caches, and a pass
    costs 2-4 times what it does in isolation. So each line is one fused pass (addcmul computes a + b c):
    4 in the forward and 5 in the backward; written with plain mul/add it took 6 and 8, and the step 3% longer
    (cpu-small GPT, interleaved A/B)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        s = _sigmoid_u(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, s = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (a gradient penalty, a Hessian-vector product): the same derivative written with
            # ops autograd can follow, s recomputed from x (the saved s carries no graph back to x)
            return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")
        d = torch.addcmul(_C1_TENSOR, x, x, value=3 * _C3).mul_(x)  # x u'(x) = x (_C1 + 3 _C3 x^2)
        d.addcmul_(d, s, value=-1.0)  # x u' (1 - s)
        return torch.addcmul(s, s, d, out=d).mul_(grad)  # (s + s x u' (1 - s)) grad, in d's buffer


# Measured on 2 cores: below 4096 elements (a decoding step) one kernel call beats five; above 2^20 (4 MB of
# float32, more than the caches hold) one pass over memory beats five.
_MIN_ELEMENTS, _MAX_ELEMENTS = 4096, 1 << 20


def gelu_tanh(x: Tensor) -> Tensor:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) \
            or not _MIN_ELEMENTS <= x.numel() <= _MAX_ELEMENTS:
        return F.gelu(x, approximate="tanh")
    if torch.is_grad_enabled() and x.requires_grad:
        return _GeluTanh.apply(x)
    return _sigmoid_u(x).mul_(x)


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": gelu_tanh}
