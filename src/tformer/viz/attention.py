"""Attention maps as pictures a person can read: one heatmap per (layer, head) or averaged over heads."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tformer.viz.text import plain_text  # noqa: E402


@plain_text
def plot_attention(weights, source_tokens: Sequence[str], target_tokens: Sequence[str], path: str | Path,
                   title: str = "", xlabel: str = "source (encoder) tokens",
                   ylabel: str = "output (decoder) tokens") -> Path:
    """Heatmap of weights (T, S): row t shows where output token t looked in the source."""
    w = np.asarray(weights, dtype=np.float32)
    t, s = w.shape
    title_width = 0.09 * max((len(line) for line in title.splitlines()), default=0)  # inches at font size 10
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * s + 1.5, title_width), max(3.0, 0.35 * t + 1.2)))
    im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-6), aspect="auto")
    ax.set_xticks(range(s))
    ax.set_xticklabels(source_tokens, rotation=90, fontsize=9)
    ax.set_yticks(range(t))
    ax.set_yticklabels(target_tokens, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@plain_text
def plot_attention_grid(weights, source_tokens: Sequence[str], target_tokens: Sequence[str], path: str | Path,
                        title: str = "") -> Path:
    """All heads of all layers: weights (L, H, T, S) -> one grid of small heatmaps on one colour scale (a head
    that spreads its attention looks dark, one that focuses looks bright); tokens on the outer panels only."""
    w = np.asarray(weights, dtype=np.float32)
    n_layers, n_heads = w.shape[:2]
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(2.6 * n_heads + 1.0, 2.4 * n_layers), squeeze=False)
    top = max(float(w.max()), 1e-6)
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            image = ax.imshow(w[layer, head], cmap="viridis", vmin=0.0, vmax=top, aspect="auto")
            ax.set_title(f"layer {layer + 1} head {head + 1}", fontsize=8)
            # Ticks only where their labels are: each tick is an object matplotlib lays out and draws, and for
            # every panel of a 72-panel grid of 38 tokens they took most of half a minute.
            if layer == n_layers - 1:
                ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=90, fontsize=5)
            else:
                ax.set_xticks([])
            if head == 0:
                ax.set_yticks(range(len(target_tokens)), target_tokens, fontsize=5)
            else:
                ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0.0, 0.0, 0.93, 1.0))  # the right edge holds the one colour bar
    fig.colorbar(image, cax=fig.add_axes((0.945, 0.15, 0.012, 0.7)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
