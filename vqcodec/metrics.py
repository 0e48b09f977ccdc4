"""Image quality metrics (PSNR, MS-SSIM) and Bjøntegaard delta rates, in numpy only.

MS-SSIM follows Wang, Simoncelli and Bovik (2003) as the learned-compression literature computes it
(CompressAI via pytorch-msssim): an 11x11 Gaussian window with sigma 1.5 applied without padding,
K1 = 0.01, K2 = 0.03, a dynamic range of 255, five scales with the weights of the paper, 2x2 average
pooling between scales, negative contrast terms clamped to 0, and the mean over the RGB channels of
each channel's MS-SSIM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03
PEAK = 255.0


def psnr(reference: np.ndarray, distorted: np.ndarray) -> float:
    """PSNR in dB of 8-bit images (peak 255), the MSE taken over all pixels and channels jointly."""
    _check_pair(reference, distorted)
    mse = np.mean((reference.astype(np.float64) - distorted.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(PEAK**2 / mse)


def ms_ssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    """MS-SSIM of two uint8 [H, W, C] images, averaged over channels (1.0 for identical images).

    The five scales need a shorter side of at least 176 px (11 px at the coarsest scale). Smaller
    images use the scales that fit, with their weights renormalised to sum to 1, so that tests and
    thumbnails get a number; an odd side loses its last row or column before pooling. The five
    published weights are used as published (they sum to 1.0001).
    """
    _check_pair(reference, distorted)
    scales = _n_scales(*reference.shape[:2])
    weights = np.array(MS_SSIM_WEIGHTS[:scales])
    if scales < len(MS_SSIM_WEIGHTS):
        weights /= weights.sum()
    x, y = (a.astype(np.float64).transpose(2, 0, 1) for a in (reference, distorted))
    window = _gaussian_window()
    factors = []
    for scale in range(scales):
        ssim, cs = _ssim_and_contrast(x, y, window)
        factors.append(np.maximum(ssim if scale == scales - 1 else cs, 0.0))
        if scale < scales - 1:
            x, y = _halve(x), _halve(y)
    per_channel = np.prod(np.stack(factors) ** weights[:, None], axis=0)
    return float(per_channel.mean())


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a decibel scale, -10 log10(1 - MS-SSIM), as rate-distortion plots show it."""
    return math.inf if value >= 1.0 else -10.0 * math.log10(1.0 - value)


def _check_pair(reference: np.ndarray, distorted: np.ndarray) -> None:
    if reference.shape != distorted.shape or reference.ndim != 3:
        raise ValueError(
            f"expected two [H, W, C] images of one shape, got {reference.shape} and {distorted.shape}"
        )


def _n_scales(height: int, width: int) -> int:
    """How many of the five scales fit: the window must fit in the coarsest one."""
    side, scales = min(height, width), 0
    while scales < len(MS_SSIM_WEIGHTS) and side >= WINDOW_SIZE:
        scales += 1
        side //= 2
    if scales == 0:
        raise ValueError(
            f"image {width}x{height} is smaller than the {WINDOW_SIZE}x{WINDOW_SIZE} SSIM window"
        )
    return scales


def _gaussian_window() -> np.ndarray:
    coords = np.arange(WINDOW_SIZE) - WINDOW_SIZE // 2
    g = np.exp(-(coords**2) / (2 * WINDOW_SIGMA**2))
    return g / g.sum()


def _blur(images: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter of [C, H, W] images, without padding ('valid')."""
    images = sliding_window_view(images, len(window), axis=2) @ window
    return sliding_window_view(images, len(window), axis=1) @ window


def _ssim_and_contrast(x: np.ndarray, y: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: the mean SSIM and the mean contrast-structure term of one scale."""
    c1, c2 = (K1 * PEAK) ** 2, (K2 * PEAK) ** 2
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    var_x = _blur(x * x, window) - mu_x**2
    var_y = _blur(y * y, window) - mu_y**2
    cov = _blur(x * y, window) - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.mean(axis=(1, 2)), cs_map.mean(axis=(1, 2))


def _halve(images: np.ndarray) -> np.ndarray:
    """2x2 average pooling of [C, H, W] images (an odd last row or column is dropped)."""
    c, height, width = images.shape
    even = images[:, : height // 2 * 2, : width // 2 * 2]
    return even.reshape(c, height // 2, 2, width // 2, 2).mean(axis=(2, 4))


# --- Bjøntegaard delta rate ---------------------------------------------------------------------------


def bd_rate(
    anchor_rate: Sequence[float],
    anchor_quality: Sequence[float],
    test_rate: Sequence[float],
    test_quality: Sequence[float],
    method: str = "pchip",
) -> float:
    """The test codec's mean bitrate difference to the anchor at equal quality, in % (negative: fewer bits).

    Log-rate is interpolated as a function of quality (PSNR, or MS-SSIM in dB) over the quality range
    both curves cover, and the mean difference of the two integrals is turned back into a rate ratio.
    ``method`` "pchip" uses piecewise cubic Hermite interpolation (the VTM/JVET common test conditions'
    choice, defined for 2 or more points); "cubic" fits one cubic polynomial (Bjøntegaard's original
    VCEG-M33, 4 or more points). Points that do not raise the quality over a cheaper point are dropped.
    """
    anchor = _rd_curve(anchor_rate, anchor_quality)
    test = _rd_curve(test_rate, test_quality)
    low = max(anchor[0][0], test[0][0])
    high = min(anchor[0][-1], test[0][-1])
    if not low < high:
        raise ValueError(f"the quality ranges do not overlap ({low:.3f} >= {high:.3f})")
    integrals = []
    for quality, log_rate in (anchor, test):
        if method == "pchip":
            integrals.append(_pchip_integral(quality, log_rate, low, high))
        elif method == "cubic":
            if len(quality) < 4:
                raise ValueError(f"a cubic fit needs 4 or more points, got {len(quality)}")
            antiderivative = np.polyint(np.polyfit(quality, log_rate, 3))
            integrals.append(float(np.polyval(antiderivative, high) - np.polyval(antiderivative, low)))
        else:
            raise ValueError(f"unknown BD-rate method {method!r}: use pchip or cubic")
    mean_difference = (integrals[1] - integrals[0]) / (high - low)
    return 100.0 * (math.exp(mean_difference) - 1.0)


def _rd_curve(rate: Sequence[float], quality: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(quality, log rate) sorted by rate, keeping only points that raise the quality, finite and positive."""
    points = sorted((r, q) for r, q in zip(rate, quality, strict=True) if r > 0 and math.isfinite(q))
    kept: list[tuple[float, float]] = []
    for r, q in points:
        if not kept or q > kept[-1][1]:
            kept.append((r, q))
    if len(kept) < 2:
        raise ValueError("a rate-distortion curve needs 2 or more points of increasing quality")
    return np.array([q for _, q in kept]), np.log([r for r, _ in kept])


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson monotone slopes at the knots, with scipy's PchipInterpolator's end conditions."""
    h = np.diff(x)
    delta = np.diff(y) / h
    if len(x) == 2:
        return np.array([delta[0], delta[0]])
    slopes = np.zeros_like(x)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same_sign = delta[:-1] * delta[1:] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
    slopes[1:-1] = np.where(same_sign, harmonic, 0.0)
    slopes[0] = _pchip_end_slope(h[0], h[1], delta[0], delta[1])
    slopes[-1] = _pchip_end_slope(h[-1], h[-2], delta[-1], delta[-2])
    return slopes


def _pchip_end_slope(h0: float, h1: float, d0: float, d1: float) -> float:
    slope = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
    if np.sign(slope) != np.sign(d0):
        return 0.0
    if np.sign(d0) != np.sign(d1) and abs(slope) > abs(3 * d0):
        return 3 * d0
    return slope


def _pchip_integral(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    """The exact integral from ``low`` to ``high`` (inside the knots) of the PCHIP interpolant."""
    slopes = _pchip_slopes(x, y)
    total = 0.0
    for i in range(len(x) - 1):
        a, b = max(low, x[i]), min(high, x[i + 1])
        if a >= b:
            continue
        h = x[i + 1] - x[i]
        t0, t1 = (a - x[i]) / h, (b - x[i]) / h
        total += h * (
            _hermite_antiderivative(t1, y[i], y[i + 1], h * slopes[i], h * slopes[i + 1])
            - _hermite_antiderivative(t0, y[i], y[i + 1], h * slopes[i], h * slopes[i + 1])
        )
    return total


def _hermite_antiderivative(t: float, y0: float, y1: float, m0: float, m1: float) -> float:
    """The antiderivative in t of the cubic Hermite segment with values y0, y1 and (scaled) slopes m0, m1."""
    return (
        y0 * (t**4 / 2 - t**3 + t)
        + m0 * (t**4 / 4 - 2 * t**3 / 3 + t**2 / 2)
        + y1 * (-(t**4) / 2 + t**3)
        + m1 * (t**4 / 4 - t**3 / 3)
    )


def value_at_rate(rate: Sequence[float], quality: Sequence[float], at: float) -> float | None:
    """A curve's quality at bitrate ``at``, linear in the rate between its points; None outside its range."""
    order = np.argsort(rate)
    r, q = np.asarray(rate, dtype=np.float64)[order], np.asarray(quality, dtype=np.float64)[order]
    if not r[0] <= at <= r[-1]:
        return None
    return float(np.interp(at, r, q))


def rate_at_value(rate: Sequence[float], quality: Sequence[float], at: float) -> float | None:
    """The bitrate a curve needs for quality ``at`` (log-rate linear in quality); None outside its range,
    or where the curve has fewer than two points of increasing quality (no range)."""
    try:
        qualities, log_rates = _rd_curve(rate, quality)
    except ValueError:
        return None
    if not qualities[0] <= at <= qualities[-1]:
        return None
    return float(np.exp(np.interp(at, qualities, log_rates)))
