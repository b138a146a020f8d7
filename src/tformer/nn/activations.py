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


def _sigmoid_u(x: Tensor) -> Tensor:
    """sigmoid(_C1 x + _C3 x^3) in one new buffer."""
    return torch.sigmoid_((x * x).mul_(_C3).add_(_C1).mul_(x))


class _GeluTanh(torch.autograd.Function):
    """x sigmoid(u(x)); d/dx = s + x u'(x) s (1 - s), with s = sigmoid(u) kept from the forward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        s = _sigmoid_u(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, s = ctx.saved_tensors
        d = (x * x).mul_(3 * _C3).add_(_C1).mul_(x)  # x u'(x)
        d.addcmul_(d, s, value=-1.0)  # x u' (1 - s), element by element in place
        return d.add_(1.0).mul_(s).mul_(grad)  # s (1 + x u' (1 - s)) grad: one buffer, no other temporaries


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
