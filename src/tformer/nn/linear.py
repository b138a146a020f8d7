"""nn.Linear with a faster path for decoding one token at a time on a CPU.

y = x W^T + b reads the whole weight matrix for every token. With one or two rows of x (a decoding step at
batch size 1 or 2) the product is a matrix-vector product limited by how fast W streams from memory, and
on CPUs the BLAS libraries stream a row-major (in, out) matrix about twice as fast as the (out, in) layout
nn.Linear stores. So, when no gradient is needed and x has few rows, this layer multiplies by a transposed
copy of W, made on first use and remade whenever W changes (an optimiser step, load_state_dict).
Training, GPUs and large batches take the ordinary F.linear path; the numbers are the same either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FAST_ROWS = 4  # measured: the transposed layout wins up to about 4 rows, and is no slower beyond


class Linear(nn.Linear):
    _decode_weight: Tensor | None = None
    _decode_key: tuple | None = None

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and x.numel() <= FAST_ROWS * self.in_features and not torch.is_grad_enabled():
            return self._forward_few_rows(x)
        return F.linear(x, self.weight, self.bias)

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
