"""Throughput and MFU: the measured matmul peak, the 6N + 12 L d T FLOPs count, tok/s over a fake clock."""

from __future__ import annotations

import math
import time

import pytest
import torch

from tformer.training import throughput
from tformer.training.throughput import Throughput, format_mfu, gpt_flops_per_token, measure_matmul_peak


def test_matmul_peak_is_positive_finite_cached_and_keeps_threads(monkeypatch):
    monkeypatch.setattr(throughput, "_PEAK_CACHE", {})
    threads = torch.get_num_threads()
    peak = measure_matmul_peak("cpu", size=128, seconds=0.05)
    assert math.isfinite(peak) and peak > 1e6  # any CPU does well over a megaFLOP/s
    assert torch.get_num_threads() == threads
    assert len(throughput._PEAK_CACHE) == 1

    t0 = time.perf_counter()
    again = measure_matmul_peak(torch.device("cpu"), dtype=torch.float32, size=128, seconds=0.05)
    assert again == peak  # identical, not re-measured
    assert time.perf_counter() - t0 < 0.01
    assert len(throughput._PEAK_CACHE) == 1


def test_matmul_peak_rejects_bad_arguments():
    with pytest.raises(ValueError):
        measure_matmul_peak("cpu", size=0)
    with pytest.raises(ValueError):
        measure_matmul_peak("cpu", size=64, seconds=0)


def test_gpt_flops_per_token_by_hand():
    assert gpt_flops_per_token(1000, n_layers=2, d_model=8, seq_len=4) == 6 * 1000 + 12 * 2 * 8 * 4
    # The position table (here 4 * 8) is a lookup: it leaves N.
    assert gpt_flops_per_token(1000, 2, 8, 4, n_embedding_params=32) == 6 * (1000 - 32) + 12 * 2 * 8 * 4
    with pytest.raises(ValueError):
        gpt_flops_per_token(10, 2, 8, 4, n_embedding_params=11)


def test_throughput_over_a_fake_clock():
    meter = Throughput(flops_per_token=1e6, peak_flops=1e9)
    meter.reset(now=100.0)
    meter.update(300)
    meter.update(200)
    rates = meter.rates(now=102.0)
    assert rates["tok/s"] == pytest.approx(250.0)
    assert rates["mfu"] == pytest.approx(1e6 * 250.0 / 1e9)  # 0.25

    meter.reset(now=200.0)
    assert meter.rates(now=200.0)["tok/s"] == 0.0  # empty window, no division by zero
    meter.update(10)
    assert meter.rates(now=201.0)["tok/s"] == pytest.approx(10.0)


def test_mfu_is_none_when_peak_or_flops_unknown():
    for meter in (Throughput(flops_per_token=1e6), Throughput(peak_flops=1e9), Throughput()):
        meter.reset(now=0.0)
        meter.update(100)
        rates = meter.rates(now=1.0)
        assert rates["tok/s"] == pytest.approx(100.0)
        assert rates["mfu"] is None


def test_format_mfu():
    assert format_mfu(0.123) == "12.3%"
    assert format_mfu(0.0) == "0.0%"
    assert format_mfu(None) == "-"
    assert format_mfu(float("nan")) == "-"
