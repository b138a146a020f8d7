"""The feed-forward activations: ReLU (the Transformer paper), GELU (BERT, exact, with erf) and GELU's tanh
approximation (GPT-2: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))).

The tanh form is rewritten with tanh(z) = 2 sigmoid(2z) - 1 as

    gelu_tanh(x) = x * sigmoid(u),   u = 2 sqrt(2/pi) (x + 0.044715 x^3)

the same function (within float rounding), because on a CPU torch's tanh, and with it its tanh-GELU kernel,
runs about three times slower than its sigmoid: a handful of cheap element-wise passes beat one slow kernel
(1.7 ms against 0.8 ms forward for a 768 x 512 activation on one core, and about half the backward). GPUs
keep torch's fused kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_C1 = 2 * math.sqrt(2 / math.pi)  # u = _C1 x + _C3 x^3
_C3 = _C1 * 0.044715


class _GeluTanh(torch.autograd.Function):
    """x sigmoid(u(x)); d/dx = s + x u'(x) s (1 - s), with s = sigmoid(u) kept from the forward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        s = torch.sigmoid_((x * x).mul_(_C3).add_(_C1).mul_(x))
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, s = ctx.saved_tensors
        d = (x * x).mul_(3 * _C3).add_(_C1).mul_(x)  # x u'(x)
        d.addcmul_(d, s, value=-1.0)  # x u' (1 - s), element by element in place
        return d.add_(1.0).mul_(s).mul_(grad)  # s (1 + x u' (1 - s)) grad: one buffer, no other temporaries


# Below this many elements (a decoding step of a few tokens) one kernel's call overhead beats five passes.
_MIN_ELEMENTS = 4096


def gelu_tanh(x: Tensor) -> Tensor:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.numel() < _MIN_ELEMENTS:
        return F.gelu(x, approximate="tanh")
    if torch.is_grad_enabled() and x.requires_grad:
        return _GeluTanh.apply(x)
    return torch.sigmoid_((x * x).mul_(_C3).add_(_C1).mul_(x)).mul_(x)


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": gelu_tanh}
