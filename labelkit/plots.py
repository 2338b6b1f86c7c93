"""Matplotlib set-up and figure encoding shared by the report and the task modules' report data."""

from __future__ import annotations

import base64
import io


def figure_uri(fig, fmt: str = "svg") -> str:
    """Return a matplotlib figure as an inline SVG string or a PNG data URI, and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, bbox_inches="tight", dpi=110 if fmt == "png" else None, metadata={"Date": None})
    plt.close(fig)
    if fmt == "svg":
        svg = buf.getvalue().decode("utf-8")
        return svg[svg.index("<svg"):]  # drop the XML prolog and doctype
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mpl():
    """Return ``matplotlib.pyplot`` on the Agg backend with labelkit's figure style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"text.parse_math": False, "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "svg.fonttype": "none", "font.family": "DejaVu Sans"})
    return plt


def plot_hbars(names, bars, *, pad: float = 0.8, xlabel: str = "rows") -> str:
    """Return an SVG of overlaid horizontal bars, one row per name (first name on top).

    `bars` is a sequence of ``(values, color, label)`` or ``(values, color, label, left)`` drawn in
    order; the legend sits above the axes with one column per bar series.
    """
    import numpy as np

    plt = mpl()
    fig, ax = plt.subplots(figsize=(6.2, 0.28 * len(names) + pad))
    y = np.arange(len(names))[::-1]
    for values, color, label, *left in bars:
        if left:
            ax.barh(y, values, left=left[0], color=color, label=label)
        else:
            ax.barh(y, values, color=color, label=label)
    ax.set_yticks(y, [str(c)[:28] for c in names])
    ax.set_xlabel(xlabel)
    ax.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(bars))
    return figure_uri(fig)


def plot_heatmap(names, matrix, *, cmap: str, xlabel: str, ylabel: str, colorbar: str) -> str:
    """Return an SVG heat map of a square matrix in [0, 1] over `names`, values printed up to 15 × 15."""
    plt = mpl()
    K = len(names)
    size = min(7.0, 1.6 + 0.42 * K)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(matrix, cmap=cmap, vmin=0, vmax=1)
    short = [str(c)[:14] for c in names]
    ax.set_xticks(range(K), short, rotation=45 if K > 6 else 0, ha="right" if K > 6 else "center")
    ax.set_yticks(range(K), short)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if K <= 15:
        for i in range(K):
            for j in range(K):
                v = matrix[i, j]
                if v >= 0.005:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v > 0.5 else "#111827")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=colorbar)
    return figure_uri(fig)
