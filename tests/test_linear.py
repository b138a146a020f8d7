"""tformer's Linear and linear give F.linear's numbers on every path: decoding few rows, oneDNN, BLAS."""

from __future__ import annotations

import pytest
import torch

import tformer.nn.linear as linear_module
from tformer.nn.linear import Linear, linear, transposed_weights


def test_few_rows_in_a_decoding_loop_match_f_linear_and_follow_updates():
    torch.manual_seed(0)
    layer = Linear(16, 24)
    x = torch.randn(2, 1, 16)
    with torch.inference_mode(), transposed_weights():
        fast = layer(x)
        assert layer._decode_weight is not None and layer._decode_weight.shape == (16, 24)
        torch.testing.assert_close(fast, torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert layer._decode_weight is None  # freed when the loop ends
    with torch.no_grad(), transposed_weights():
        layer.weight.add_(1.0)  # an optimiser step changes the weight in place
        after = layer(x)
        torch.testing.assert_close(after, torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert not torch.allclose(after, fast)


def test_weights_edited_through_data_between_loops_are_read_afresh():
    """.data edits bump no version counter: a copy kept from one loop to the next would give the old outputs."""
    layer = Linear(8, 4)
    x = torch.randn(1, 8)
    with torch.no_grad(), transposed_weights():
        assert layer(x).abs().sum() > 0
    layer.weight.data.zero_()
    layer.bias.data.zero_()
    with torch.no_grad(), transposed_weights():
        assert layer(x).abs().sum() == 0
    with torch.no_grad():
        assert layer(x).abs().sum() == 0


def test_training_and_many_rows_take_the_ordinary_path():
    layer = Linear(8, 8, bias=False)
    with transposed_weights():
        y = layer(torch.randn(3, 8, requires_grad=True))
        assert y.requires_grad and layer._decode_weight is None
        with torch.no_grad():
            layer(torch.randn(64, 8))
        assert layer._decode_weight is None
        with torch.no_grad():
            out = layer(torch.randn(1, 8))
        assert layer._decode_weight is not None and out.shape == (1, 8)
    with torch.no_grad():  # outside a decoding loop: the ordinary path, no copy
        layer(torch.randn(1, 8))
    assert layer._decode_weight is None


def test_generation_leaves_no_copies_and_sees_data_edits():
    from tformer.generation.sampling import generate
    from tformer.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=12, max_len=16, d_model=16, n_heads=2, n_layers=1)).eval()
    first = generate(model, [[1, 2]], 4)
    assert all(m._decode_weight is None for m in model.modules() if isinstance(m, Linear))
    other = GPT(GPTConfig(vocab_size=12, max_len=16, d_model=16, n_heads=2, n_layers=1)).eval()
    for p, q in zip(model.parameters(), other.parameters()):
        p.data.copy_(q.data)
    assert generate(model, [[1, 2]], 4) == generate(other, [[1, 2]], 4)
    assert first is not None


def _assert_linear_matches_f_linear(d_out: int, bias: bool, function: str) -> None:
    """linear() of a (3, 7, 24) input goes through the autograd Function named `function` and gives
    F.linear's output and gradients."""
    torch.manual_seed(0)
    x = torch.randn(3, 7, 24, requires_grad=True)
    w = torch.randn(d_out, 24, requires_grad=True)
    b = torch.randn(d_out, requires_grad=True) if bias else None
    y = linear(x, w, b)
    assert function in type(y.grad_fn.next_functions[0][0]).__name__
    g = torch.randn_like(y)
    y.backward(g)
    grads = [t.grad.clone() for t in (x, w, b) if t is not None]
    for t in (x, w, b):
        if t is not None:
            t.grad = None
    ref = torch.nn.functional.linear(x, w, b)
    ref.backward(g)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    for got, t in zip(grads, [t for t in (x, w, b) if t is not None]):
        torch.testing.assert_close(got, t.grad, atol=1e-5, rtol=1e-5)


# -- the oneDNN path for large fp32 products on a CPU ----------------------------------------------------

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture
def onednn_for_small_products(monkeypatch):
    monkeypatch.setattr(linear_module, "_tuned_choice", True)
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_ROWS", 4)
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_SIDE", 4)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_path_gives_f_linear_values_and_gradients(onednn_for_small_products, bias):
    _assert_linear_matches_f_linear(d_out=40, bias=bias, function="OneDNN")


@needs_onednn
def test_onednn_path_only_where_it_was_measured_to_pay(onednn_for_small_products, monkeypatch):
    calls = []
    monkeypatch.setattr(linear_module, "_onednn_linear", lambda *a: calls.append(1) or torch.nn.functional.linear(*a))
    w = torch.randn(8, 8)
    linear(torch.randn(16, 8), w)
    assert calls == [1]
    linear(torch.randn(16, 8, dtype=torch.float64), w.double())  # not fp32
    linear(torch.randn(2, 8), w)  # too few rows
    monkeypatch.setattr(linear_module, "ONEDNN_MAX_SIDE", 7)
    linear(torch.randn(16, 8), w)  # a side over the maximum
    assert calls == [1]
    monkeypatch.setattr(linear_module, "ONEDNN_MAX_SIDE", 4096)
    monkeypatch.setattr(linear_module, "_tuned_choice", False)  # BLAS measured faster on this CPU
    linear(torch.randn(16, 8), w)
    assert calls == [1]
    monkeypatch.setattr(linear_module, "_tuned_choice", True)
    monkeypatch.setattr(linear_module, "_onednn_op", False)  # a torch without the private op: F.linear
    x = torch.randn(16, 8)
    assert torch.equal(linear(x, w), torch.nn.functional.linear(x, w))
    assert calls == [1]


@pytest.mark.parametrize("setting, expected", [("blas", False), ("onednn", True)])
def test_the_choice_can_be_fixed_by_environment(monkeypatch, setting, expected):
    monkeypatch.setattr(linear_module, "_tuned_choice", None)
    monkeypatch.setenv("TFORMER_CPU_MATMUL", setting)
    assert linear_module.tuned_cpu_products() is expected


def test_by_default_amd_cpus_take_the_tuned_paths(monkeypatch):
    monkeypatch.delenv("TFORMER_CPU_MATMUL", raising=False)
    for vendor, expected in [("AuthenticAMD", True), ("GenuineIntel", False), ("", False)]:
        monkeypatch.setattr(linear_module, "_tuned_choice", None)
        monkeypatch.setattr(linear_module, "_cpu_vendor", lambda v=vendor: v)
        assert linear_module.tuned_cpu_products() is expected


def test_an_unknown_setting_warns_and_falls_back_to_auto(monkeypatch):
    monkeypatch.setattr(linear_module, "_tuned_choice", None)
    monkeypatch.setattr(linear_module, "_cpu_vendor", lambda: "GenuineIntel")
    monkeypatch.setenv("TFORMER_CPU_MATMUL", "mkl")
    with pytest.warns(UserWarning, match="TFORMER_CPU_MATMUL='mkl'"):
        assert linear_module.tuned_cpu_products() is False


# -- blocked gradients for products wider than ONEDNN_MAX_SIDE (a vocabulary projection) -----------------

@pytest.fixture
def blocked_for_small_products(monkeypatch):
    monkeypatch.setattr(linear_module, "_tuned_choice", True)
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_ROWS", 4)
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_SIDE", 4)
    monkeypatch.setattr(linear_module, "ONEDNN_MAX_SIDE", 30)
    monkeypatch.setattr(linear_module, "GRAD_BLOCK", 8)  # 21 rows, 45 words: two whole blocks and a part


@pytest.mark.parametrize("bias", [True, False])
def test_blocked_gradients_give_f_linear_values_and_gradients(blocked_for_small_products, bias):
    _assert_linear_matches_f_linear(d_out=45, bias=bias, function="BlockedGrad")


def test_blocked_gradients_only_when_a_gradient_is_wanted_and_tuned(blocked_for_small_products, monkeypatch):
    x, w = torch.randn(21, 24), torch.randn(45, 24, requires_grad=True)
    assert "BlockedGrad" in type(linear(x, w).grad_fn).__name__  # a weight gradient alone is enough
    with torch.no_grad():
        assert linear(x, w).grad_fn is None
    assert linear(x, w.detach()).grad_fn is None
    assert "BlockedGrad" not in type(linear(torch.randn(21, 45), w.t()).grad_fn).__name__  # wide input side
    monkeypatch.setattr(linear_module, "_tuned_choice", False)
    assert "BlockedGrad" not in type(linear(x, w).grad_fn).__name__


def test_a_model_built_under_inference_mode_decodes():
    """Parameters made under inference_mode have no version counter: asking for it raised in every decoding step."""
    with torch.inference_mode():
        layer = Linear(8, 4)
        x = torch.randn(1, 8)
        with transposed_weights():
            torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert layer._decode_weight is None


def test_decoding_loops_in_several_threads_share_a_model():
    """One thread's loop ending drops the copies it made while another thread's loop is using them: that thread
    read a key without its copy (TypeError from addmm), about one call in ten."""
    import threading

    from tformer.generation.search import greedy_decode
    from tformer.models.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2, d_ff=32,
                                          n_encoder_layers=1, n_decoder_layers=1)).eval()
    src = torch.randint(3, 20, (1, 5))
    expected = greedy_decode(model, src, max_len=5)
    errors = []

    def work():
        for _ in range(100):
            try:
                if greedy_decode(model, src, max_len=5) != expected:
                    errors.append("different tokens")
            except Exception as exc:  # noqa: BLE001 - any failure in a thread is the test's failure
                errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(m._decode_weight is None for m in model.modules() if isinstance(m, Linear))
