"""The activations: tformer's tanh-GELU (written through a sigmoid for speed on CPUs) is GPT-2's function."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tformer.nn.activations import ACTIVATIONS, gelu_tanh


def test_gelu_tanh_matches_torch_values_and_gradients():
    torch.manual_seed(0)
    x = (torch.randn(64, 96) * 3).requires_grad_()
    grad = torch.randn(64, 96)
    ours = gelu_tanh(x)
    ours.backward(grad)
    ours_grad = x.grad.clone()
    x.grad = None
    ref = F.gelu(x, approximate="tanh")
    ref.backward(grad)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours_grad, x.grad, atol=1e-5, rtol=1e-5)
    # GPT-2's own formula, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in double precision.
    xd = x.detach().double()
    gpt2 = 0.5 * xd * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (xd + 0.044715 * xd**3)))
    torch.testing.assert_close(gelu_tanh(xd), gpt2, atol=1e-12, rtol=1e-12)


def test_gelu_tanh_gradient_is_exact_and_inference_path_leaves_input_alone():
    x = torch.linspace(-8, 8, 64 * 64, dtype=torch.double).view(64, 64).requires_grad_()
    assert torch.autograd.gradcheck(gelu_tanh, (x,), fast_mode=True)
    y = torch.linspace(-30.0, 30.0, 8192)
    before = y.clone()
    with torch.no_grad():
        out = gelu_tanh(y)
    assert torch.equal(y, before)  # the no-grad path works in place on its own buffer, not the input
    torch.testing.assert_close(out, F.gelu(before, approximate="tanh"), atol=1e-6, rtol=1e-5)
    assert out[0] == 0.0 and out[-1] == 30.0  # saturates cleanly at both ends
    assert torch.equal(gelu_tanh(y[:10]), F.gelu(y[:10], approximate="tanh"))  # few elements: torch's kernel
    assert ACTIVATIONS["gelu_tanh"] is gelu_tanh


def test_gelu_tanh_large_inputs_take_torchs_kernel():
    x = torch.randn((1 << 20) + 1)
    assert torch.equal(gelu_tanh(x), F.gelu(x, approximate="tanh"))


def test_gelu_tanh_second_derivative_matches_torch():
    """create_graph=True (a gradient penalty, a Hessian-vector product) differentiates the gradient again: the
    saved sigmoid carries no graph back to x, and the fast backward writes with out=, which autograd refuses."""
    torch.manual_seed(0)
    x = (torch.randn(64, 96, dtype=torch.double) * 3).requires_grad_()  # within the custom kernel's sizes
    assert torch.autograd.gradgradcheck(gelu_tanh, (x,))
    (g,) = torch.autograd.grad(gelu_tanh(x).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    xr = x.detach().requires_grad_()
    (gr,) = torch.autograd.grad(F.gelu(xr, approximate="tanh").sum(), xr, create_graph=True)
    (ggr,) = torch.autograd.grad(gr.sum(), xr)
    torch.testing.assert_close(g, gr)
    torch.testing.assert_close(gg, ggr)
