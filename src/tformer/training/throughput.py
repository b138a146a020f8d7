"""Tokens per second and model FLOPs utilisation (MFU), with the peak measured rather than assumed.

MFU (Chowdhery et al. 2022, PaLM, appendix B) is the model's FLOPs per token times the tokens per second,
divided by the hardware's peak FLOP/s. The peak comes from `measure_matmul_peak` (a dense matmul timed on
this very device, dtype and thread count) or from a config value, never from a hard-coded datasheet
number: a datasheet peak is wrong for a CPU, a shared GPU or a MIG slice, and it flatters nobody.
"""

from __future__ import annotations

import math
import time

import torch

# (device type, device index, dtype, matrix size, CPU threads) -> measured FLOP/s, so a second call is free.
_PEAK_CACHE: dict[tuple[str, int | None, torch.dtype, int, int], float] = {}


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock time covers the work (a no-op on CPU, which runs eagerly)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    size: int | None = None,
    seconds: float = 0.5,
) -> float:
    """The device's measured dense matmul throughput in FLOP/s: the denominator of MFU.

    Times `a @ b` on square (size, size) matrices, 2 * size^3 FLOPs each, for about `seconds` after one
    warm-up, and returns the best rate seen (the peak is what the hardware can do, so noise only lowers
    it). Defaults: float32 and size 1024 on CPU, bfloat16 and size 8192 on CUDA (large enough to saturate
    the tensor cores). Runs on torch's current thread count, which it does not change, so a CPU peak
    matches the conditions training runs under. Cached per (device, dtype, size, threads).
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if size is None:
        size = 8192 if device.type == "cuda" else 1024
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")

    threads = torch.get_num_threads() if device.type == "cpu" else 0
    key = (device.type, device.index, dtype, size, threads)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]

    flops = 2.0 * size**3  # size^2 outputs, each `size` multiplies and `size` adds
    with torch.inference_mode():
        # A generator of its own: drawing from the global one would change what a resumed run draws next
        # (its dropout), so that it no longer equals the uninterrupted run.
        generator = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
        b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
        out = torch.empty(size, size, device=device, dtype=dtype)

        # Warm-up: first-call costs (kernel selection, page faults, clock ramp) would understate the peak.
        _synchronize(device)
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        _synchronize(device)
        one = max(time.perf_counter() - t0, 1e-9)

        # Time batches of `reps` matmuls (about a tenth of the budget each), so a sample is long against
        # the synchronisation and timer overhead, yet there are several samples to take the best of.
        reps = max(1, int(seconds / 10 / one))
        best = 0.0
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b, out=out)
            _synchronize(device)
            t1 = time.perf_counter()
            best = max(best, reps * flops / max(t1 - t0, 1e-9))
            if t1 - start >= seconds:
                break

    _PEAK_CACHE[key] = best
    return best


def gpt_flops_per_token(
    n_params: int, n_layers: int, d_model: int, seq_len: int, n_embedding_params: int = 0
) -> float:
    """Training FLOPs per token of a decoder-only Transformer: 6 N + 12 L d_model T.

    Derivation (Kaplan et al. 2020, sec. 2.1; PaLM appendix B): each weight costs 2 FLOPs per token forward
    (multiply, add) and 4 backward (input and weight gradients), hence 6 N; per layer the scores Q K^T and the
    weighted sum A V cost 2 T d_model each forward, 4 T d_model, times 3 with the backward, hence 12 L d_model T.

    N = n_params - n_embedding_params counts only parameters that take part in a matmul. Pass the
    position-embedding table (T_max * d_model for learned positions, 0 for sinusoidal) as
    `n_embedding_params`: it is a lookup, no FLOPs. Keep a token embedding tied to the output layer in
    `n_params`, since that matrix does the (vocab x d_model) logits matmul; an untied input embedding is
    a lookup too and belongs in `n_embedding_params`. The attention term counts all T keys, as PaLM does,
    though a causal mask makes half of them zero.
    """
    if not 0 <= n_embedding_params <= n_params:
        raise ValueError(f"n_embedding_params={n_embedding_params} must lie in [0, n_params={n_params}]")
    n = n_params - n_embedding_params
    return 6.0 * n + 12.0 * n_layers * d_model * seq_len


class Throughput:
    """Tokens per second and MFU over a window: `update` after each step, `rates` to log, `reset` to start anew.

    MFU = flops_per_token * tok/s / peak_flops, a fraction (0.4 means 40 %); None when either is unknown,
    rather than a number computed from a guess.
    """

    def __init__(self, flops_per_token: float | None = None, peak_flops: float | None = None):
        if flops_per_token is not None and flops_per_token < 0:
            raise ValueError(f"flops_per_token must be non-negative, got {flops_per_token}")
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"peak_flops must be positive, got {peak_flops}")
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.reset()

    def reset(self, now: float | None = None) -> None:
        """Start a new window at `now` (time.perf_counter() when not given) with no tokens."""
        self.start = time.perf_counter() if now is None else now
        self.tokens = 0

    def update(self, tokens: int) -> None:
        """Count `tokens` processed in this window."""
        self.tokens += tokens

    def rates(self, now: float | None = None) -> dict[str, float | None]:
        """{"tok/s": tokens per second, "mfu": fraction of peak or None} since the last reset.

        An empty window (no time elapsed yet) reports 0 tok/s rather than dividing by zero.
        """
        now = time.perf_counter() if now is None else now
        elapsed = now - self.start
        tok_s = self.tokens / elapsed if elapsed > 0 else 0.0
        mfu = None
        if self.flops_per_token is not None and self.peak_flops is not None:
            mfu = self.flops_per_token * tok_s / self.peak_flops
        return {"tok/s": tok_s, "mfu": mfu}


def format_mfu(mfu: float | None) -> str:
    """MFU for a log line: "12.3%", or "-" when it is unknown (or not a finite number)."""
    if mfu is None or not math.isfinite(mfu):
        return "-"
    return f"{100.0 * mfu:.1f}%"
