"""ROC (log FAR axis) and DET curves as PNG, several models or runs on one figure.

Each curve's legend entry carries its TAR@FAR row, so the figure is its own table.
matplotlib is imported lazily (the ``report`` extra); without it, plotting raises ImportError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_face.eval.ijb import roc_curve, tar_at_far

#: FARs shown in each legend row.
LEGEND_FARS = (1e-4, 1e-3, 1e-2)


@dataclass(frozen=True)
class Curve:
    """One scored pair set to draw."""

    name: str
    """Legend name, e.g. ``trained`` or a run name."""
    labels: np.ndarray
    """``[P]`` 1 genuine, 0 impostor."""
    scores: np.ndarray
    """``[P]`` similarity scores."""


def _legend(curve: Curve, fars: tuple[float, ...]) -> str:
    tars = tar_at_far(curve.labels, curve.scores, fars)
    row = ", ".join(f"{far:g}: {100 * tar:.2f}" for far, tar in tars.items())
    return f"{curve.name} (TAR% @ FAR {row})"


def _probit(p: np.ndarray) -> np.ndarray:
    """Inverse normal CDF (DET axes), via the error function's inverse from its series."""
    from statistics import NormalDist

    nd = NormalDist()
    return np.array([nd.inv_cdf(float(min(max(v, 1e-9), 1 - 1e-9))) for v in p])


def plot_roc_det(
    curves: list[Curve],
    out_dir: str | os.PathLike[str],
    title: str = "",
    fars: tuple[float, ...] = LEGEND_FARS,
) -> tuple[Path, Path]:
    """Write ``roc.png`` (TAR against FAR on a log axis) and ``det.png`` (FRR against FAR).

    Args:
        curves: the pair sets to draw, one line each.
        out_dir: directory to write into.
        title: figure title.
        fars: FARs listed in each legend entry.

    Returns:
        The two PNG paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    roc_fig, roc_ax = plt.subplots(figsize=(7, 5))
    det_fig, det_ax = plt.subplots(figsize=(7, 5))
    for curve in curves:
        fpr, tpr, _ = roc_curve(curve.labels, curve.scores)
        label = _legend(curve, fars)
        keep = fpr > 0  # log axis
        roc_ax.plot(fpr[keep], tpr[keep], label=label)
        keep = (fpr > 0) & (tpr < 1)
        det_ax.plot(_probit(fpr[keep]), _probit(1 - tpr[keep]), label=label)
    roc_ax.set_xscale("log")
    roc_ax.set(xlabel="FAR (false accept rate)", ylabel="TAR (true accept rate)", ylim=(0, 1.01))
    ticks = np.array([1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5])
    det_ax.set_xticks(_probit(ticks), [f"{t:g}" for t in ticks])
    det_ax.set_yticks(_probit(ticks), [f"{t:g}" for t in ticks])
    det_ax.set(xlabel="FAR (false accept rate)", ylabel="FRR (false reject rate)")
    paths = []
    for fig, ax, name in ((roc_fig, roc_ax, "roc.png"), (det_fig, det_ax, "det.png")):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if name == "roc.png" else "upper right")
        ax.set_title(title or name[:3].upper())
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    return paths[0], paths[1]
