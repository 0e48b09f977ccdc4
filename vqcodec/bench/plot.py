"""The rate-distortion figure: PSNR and MS-SSIM (dB) against bpp, one line per codec, vqcodec on top."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vqcodec.bench.rd import Curve


def plot_rd(curves: list[Curve], path: Path, title: str) -> None:
    """Write a two-panel R-D plot of ``curves`` to ``path`` (PNG).

    Uses a bare matplotlib Figure (drawn by Agg) rather than pyplot, so the caller's backend and
    pyplot state are left alone.
    """
    from matplotlib.figure import Figure

    from vqcodec.bench.rd import is_vqcodec

    figure = Figure(figsize=(13, 5.5), layout="constrained")
    axes = figure.subplots(1, 2)
    panels = (("psnr", "PSNR (dB), RGB"), ("ms_ssim_db", "MS-SSIM (dB) = -10 log10(1 - MS-SSIM)"))
    for ax, (column, label) in zip(axes, panels, strict=True):
        for curve in curves:
            style = (
                {"marker": "*", "markersize": 16, "linewidth": 2.5, "zorder": 3}
                | ({"color": "crimson"} if curve.key == "vqcodec" else {})  # several models: a colour each
                if is_vqcodec(curve)
                else {"marker": "o", "markersize": 4, "linewidth": 1.2}
            )
            (line,) = ax.plot(curve.column("bpp"), curve.column(column), label=curve.name, **style)
            if is_vqcodec(curve):
                for point in curve.points:
                    ax.annotate(
                        point.setting,
                        (point.bpp, getattr(point, column)),
                        textcoords="offset points",
                        xytext=(8, -12),
                        fontsize=8,
                        color=line.get_color(),
                    )
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    figure.suptitle(f"Rate-distortion on {title}")
    figure.savefig(path, dpi=110)
