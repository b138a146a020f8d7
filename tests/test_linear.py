"""The decoding fast path of tformer's Linear gives nn.Linear's numbers and follows weight updates."""

from __future__ import annotations

import torch

from tformer.nn.linear import Linear


def test_few_rows_without_grad_match_f_linear_and_follow_updates():
    torch.manual_seed(0)
    layer = Linear(16, 24)
    x = torch.randn(2, 1, 16)
    with torch.inference_mode():
        fast = layer(x)
    assert layer._decode_weight is not None and layer._decode_weight.shape == (16, 24)
    torch.testing.assert_close(fast, torch.nn.functional.linear(x, layer.weight, layer.bias))
    with torch.no_grad():
        layer.weight.add_(1.0)  # an optimiser step changes the weight in place
        after = layer(x)
    torch.testing.assert_close(after, torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert not torch.allclose(after, fast)


def test_training_and_many_rows_take_the_ordinary_path():
    layer = Linear(8, 8, bias=False)
    y = layer(torch.randn(3, 8, requires_grad=True))
    assert y.requires_grad and layer._decode_weight is None
    with torch.no_grad():
        layer(torch.randn(64, 8))
    assert layer._decode_weight is None
    with torch.no_grad():
        out = layer(torch.randn(1, 8))
    assert layer._decode_weight is not None and out.shape == (1, 8)
