"""tformer's CPU dropout: inverted dropout with the right keep rate, one mask for forward and backward."""

from __future__ import annotations

import pytest
import torch

from tformer.nn.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_keep_rate_and_scale(p):
    torch.manual_seed(0)
    x = torch.ones(400, 500)
    y = dropout(x, p, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005  # 200k draws: a 5-sigma band is ~0.0035
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert abs(y.mean().item() - 1.0) < 0.01  # expectation preserved


def test_backward_uses_the_forward_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    y = dropout(x, 0.2, training=True)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.8)


def test_identity_in_eval_and_at_zero_and_seeded():
    x = torch.randn(8, 8)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    torch.manual_seed(5)
    a = keep_mask(torch.Size([7, 9]), 0.3, torch.device("cpu"))
    torch.manual_seed(5)
    b = keep_mask(torch.Size([7, 9]), 0.3, torch.device("cpu"))
    assert torch.equal(a, b) and a.shape == (7, 9)
    m = Dropout(0.25).eval()
    assert m(x) is x
    with pytest.raises(ValueError):
        Dropout(1.5)
