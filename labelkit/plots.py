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
