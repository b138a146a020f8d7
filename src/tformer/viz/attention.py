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
    # Sizes in inches. A panel gives each token label 0.09 in (the labels are 5 pt), the outer panels' labels get
    # room for the longest token, the title its width at 10 pt, and the colour bar a fixed strip for its numbers:
    # fixed 2.6 x 2.4 in panels smeared 39 labels into one another on a 1-layer, 2-head model and cut the title.
    label = 0.055 * max((len(tok) for tok in [*source_tokens, *target_tokens]), default=1) + 0.35
    panel_w, panel_h = max(2.6, 0.09 * w.shape[3] + 0.4), max(2.4, 0.09 * w.shape[2] + 0.5)
    title_width = 0.09 * max((len(line) for line in title.splitlines()), default=0)
    bar = 1.0  # the colour bar and its tick labels
    width = max(panel_w * n_heads + label + bar, title_width + 0.5)
    height = panel_h * n_layers + label + (0.4 if title else 0.0)
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(width, height), squeeze=False)
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
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - bar / width, 1.0))  # the right strip holds the one colour bar
    fig.colorbar(image, cax=fig.add_axes((1.0 - 0.85 * bar / width, 0.15, 0.15 / width, 0.7)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
