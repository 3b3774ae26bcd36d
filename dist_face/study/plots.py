"""The loss study's pictures: toy 2-D features, cosine histograms, ROC curves (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dist_face.study.scores import pair_scores


def _pyplot():  # matplotlib: an optional dependency (extra "report"), imported on use
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def toy_figure(toy_dir: Path, margins: tuple[str, ...], path: Path) -> Path:
    """Side-by-side 2-D training features of 10 identities, one panel per margin.

    Softmax is drawn as raw features (its logits use the norms); the normalised losses as
    points on the unit circle (jittered outward by a little so clusters stay visible), with a
    line from the origin to each class center direction.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(margins), figsize=(3.2 * len(margins), 3.4))
    cmap = plt.get_cmap("tab10")
    for ax, margin in zip(np.atleast_1d(axes), margins):
        with np.load(toy_dir / f"{margin}.npz") as z:
            feats, labels, centers = z["features"], z["labels"], z["centers"]
        if margin == "softmax":
            pts = feats
        else:
            unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
            radius = 1.0 + 0.06 * np.random.default_rng(0).random((len(unit), 1))
            pts = unit * radius
            ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, lw=0.5, color="0.7"))
        for c in np.unique(labels):
            sel = labels == c
            ax.scatter(pts[sel, 0], pts[sel, 1], s=5, color=cmap(c % 10), alpha=0.7)
            w = centers[c] / np.linalg.norm(centers[c])
            reach = np.abs(pts).max() if margin == "softmax" else 1.15
            ax.plot([0, w[0] * reach], [0, w[1] * reach], color=cmap(c % 10), lw=0.8)
        ax.set_aspect("equal")
        ax.set_title(margin)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("2-D features of 10 training identities (lines: class centers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cosine_histograms(embeddings: dict[str, np.ndarray], labels: np.ndarray, path: Path) -> Path:
    """Per loss, histograms of genuine and impostor cosines on held-out pairs."""
    plt = _pyplot()
    n = len(embeddings)
    cols = 4
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    bins = np.linspace(-1, 1, 81)
    for ax, (name, emb) in zip(axes.flat, embeddings.items()):
        s, same = pair_scores(emb, labels)
        ax.hist(s[~same], bins=bins, density=True, alpha=0.6, label="impostor", color="tab:red")
        ax.hist(s[same], bins=bins, density=True, alpha=0.6, label="genuine", color="tab:blue")
        ax.set_title(name, fontsize=9)
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("cosine similarity of held-out pairs (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def roc_figure(embeddings: dict[str, np.ndarray], labels: np.ndarray, path: Path) -> Path:
    """ROC (TAR against FAR, log FAR axis) of every loss on one plot."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    styles = ["-", "--", ":", "-."]
    for k, (name, emb) in enumerate(embeddings.items()):
        s, same = pair_scores(emb, labels)
        order = np.argsort(-s, kind="stable")
        hits = same[order]
        tar = np.cumsum(hits) / max(hits.sum(), 1)
        far = np.cumsum(~hits) / max((~hits).sum(), 1)
        ax.plot(far, tar, styles[(k // 10) % 4], label=name, lw=1.2)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title("held-out verification ROC (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
