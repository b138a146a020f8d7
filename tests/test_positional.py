"""Positional encodings: the sinusoidal formula, growth past max_len, learned positions, offsets."""

import math

import pytest
import torch

from tformer.nn.positional import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    make_positional,
    sinusoidal_table,
)


def _pe(pos: int, col: int, d: int) -> float:
    i = col // 2
    angle = pos / 10000 ** (2 * i / d)
    return math.sin(angle) if col % 2 == 0 else math.cos(angle)


@pytest.mark.parametrize("d", [16, 32, 512])
def test_sinusoidal_formula(d):
    table = sinusoidal_table(100, d)
    assert table.shape == (100, d)
    assert table.dtype == torch.float32
    for pos in (0, 1, 2, 7, 50, 99):
        for i in (0, 1, 3, d // 4, d // 2 - 1):
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / d)), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / d)), abs=1e-6)


def test_sinusoidal_whole_table_against_formula():
    d = 16
    table = sinusoidal_table(30, d)
    expected = torch.tensor([[_pe(p, c, d) for c in range(d)] for p in range(30)])
    assert torch.allclose(table, expected, atol=1e-6)


def test_position_zero():
    row = sinusoidal_table(4, 16)[0]
    assert row.tolist() == [0.0, 1.0] * 8


def test_first_pair_has_wavelength_2pi():
    # Column 0 is sin(pos), column 1 is cos(pos).
    table = sinusoidal_table(10, 8)
    pos = torch.arange(10, dtype=torch.float32)
    assert torch.allclose(table[:, 0], torch.sin(pos), atol=1e-6)
    assert torch.allclose(table[:, 1], torch.cos(pos), atol=1e-6)


def test_values_bounded_and_rows_distinct():
    table = sinusoidal_table(200, 32)
    assert table.abs().max() <= 1.0
    assert torch.unique(table, dim=0).size(0) == 200


def test_odd_d_model():
    table = sinusoidal_table(5, 7)
    assert table.shape == (5, 7)
    for pos in range(5):
        for col in range(7):
            assert table[pos, col].item() == pytest.approx(_pe(pos, col, 7), abs=1e-6)


def test_module_returns_slice_and_offset():
    pe = SinusoidalPositionalEncoding(16, max_len=32)
    full = sinusoidal_table(32, 16)
    assert torch.equal(pe(10), full[:10])
    assert torch.equal(pe(3, offset=5), full[5:8])
    assert torch.equal(pe(1, offset=31), full[31:32])


def test_sinusoidal_grows_beyond_max_len():
    pe = SinusoidalPositionalEncoding(16, max_len=8)
    out = pe(20)
    assert out.shape == (20, 16)
    assert torch.allclose(out, sinusoidal_table(20, 16), atol=1e-6)
    # With an offset past the end too.
    late = pe(4, offset=100)
    assert late.shape == (4, 16)
    assert torch.allclose(late, sinusoidal_table(104, 16)[100:], atol=1e-6)
    # Earlier positions are unchanged after growth.
    assert torch.allclose(pe(8), sinusoidal_table(8, 16), atol=1e-6)


def test_sinusoidal_growth_keeps_dtype():
    # A model cast to bf16/fp16 must get positions of its own dtype past max_len too; a float32 table
    # would promote the embeddings to float32 and the next Linear fails with a dtype mismatch.
    pe = SinusoidalPositionalEncoding(16, max_len=8).to(torch.bfloat16)
    assert pe(4).dtype == torch.bfloat16
    grown = pe(20)
    assert grown.dtype == torch.bfloat16
    assert torch.allclose(grown.float(), sinusoidal_table(20, 16), atol=1e-2)


def test_sinusoidal_has_no_parameters_and_is_not_saved():
    pe = SinusoidalPositionalEncoding(16, max_len=8)
    assert list(pe.parameters()) == []
    assert "table" not in pe.state_dict()


def test_learned_positions():
    torch.manual_seed(0)
    pe = LearnedPositionalEmbedding(16, max_len=10)
    assert pe.weight.shape == (10, 16) and pe.weight.requires_grad
    assert torch.equal(pe(4), pe.weight[:4])
    assert torch.equal(pe(3, offset=7), pe.weight[7:10])
    assert pe(10).shape == (10, 16)


def test_learned_positions_raise_past_max_len():
    pe = LearnedPositionalEmbedding(16, max_len=10)
    with pytest.raises(ValueError, match="max_len=10"):
        pe(11)
    with pytest.raises(ValueError):
        pe(2, offset=9)
    pe(1, offset=9)  # the last position is fine


def test_make_positional():
    assert isinstance(make_positional("sinusoidal", 16, 8), SinusoidalPositionalEncoding)
    assert isinstance(make_positional("learned", 16, 8), LearnedPositionalEmbedding)
    with pytest.raises(ValueError, match="rotary"):
        make_positional("rotary", 16, 8)


def test_relative_position_is_linear():
    # Section 3.5: PE(pos+k) is a linear function (a rotation per frequency) of PE(pos).
    d, k = 16, 3
    table = sinusoidal_table(40, d).double()
    for i in range(d // 2):
        w = 1 / 10000 ** (2 * i / d)
        rot = torch.tensor([[math.cos(k * w), -math.sin(k * w)], [math.sin(k * w), math.cos(k * w)]],
                           dtype=torch.float64)
        pair = table[:, 2 * i: 2 * i + 2]  # (sin, cos)
        assert torch.allclose(pair[:-k] @ rot, pair[k:], atol=1e-5)
