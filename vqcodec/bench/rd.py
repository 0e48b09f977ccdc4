"""Rate-distortion: every codec at every setting on every image, then JSON files, a table and a plot.

Per setting the images' bpp, PSNR, MS-SSIM and encode/decode seconds are averaged (the mean of the
per-image values, as CompressAI reports them). vqcodec is compared with each other codec at the
bitrate of each of its operating points, and by Bjøntegaard delta rate over its curve when it has
two or more (a BD-rate needs a curve).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqcodec import metrics
from vqcodec.bench.codecs import CODECS, Adapter, load_models, make_adapters
from vqcodec.bench.report import machine_info, number, run_line, save, table
from vqcodec.quality import SWEEP_QUALITIES
from vqcodec.rdo import DEFAULT_EFFORT

WARM_UP_SIDE = 64
"""Side of the crop that warms every codec setting up before it is timed (a multiple of any model's)."""


@dataclass
class Point:
    """One codec setting, averaged over the images."""

    setting: str
    bpp: float
    psnr: float
    ms_ssim: float
    encoding_time: float
    decoding_time: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ms_ssim_db(self) -> float:
        return metrics.ms_ssim_db(self.ms_ssim)


def is_vqcodec(curve: Curve) -> bool:
    """Whether ``curve`` is one of vqcodec's (one per model), not a codec it is compared with."""
    return curve.key == "vqcodec" or curve.key.startswith("vqcodec-")


@dataclass
class Curve:
    """A codec's points, by increasing bpp."""

    key: str
    name: str
    description: str
    setting_name: str
    points: list[Point]

    def column(self, name: str) -> list[float]:
        return [getattr(point, name) for point in self.points]

    def to_json(self, bench: dict[str, Any]) -> dict[str, Any]:
        """CompressAI's results format, with this benchmark's own fields under "bench"."""
        results = {
            "bpp": self.column("bpp"),
            "psnr-rgb": self.column("psnr"),
            "ms-ssim-rgb": self.column("ms_ssim"),
            "encoding_time": self.column("encoding_time"),
            "decoding_time": self.column("decoding_time"),
        }
        bench = {"setting_name": self.setting_name, "settings": self.column("setting"), **bench}
        if any(point.extra for point in self.points):
            bench["points"] = [{"setting": p.setting, **p.extra} for p in self.points]
        return {"name": self.name, "description": self.description, "results": results, "bench": bench}


@dataclass
class Report:
    """Everything a run measured, and where it wrote it."""

    data: Path
    images: list[str]
    curves: list[Curve]
    comparison: dict[str, dict[str, Any]]
    """Each vqcodec curve's (by key) against the other codecs' (``compare``)."""
    notes: list[str]
    machine: dict[str, Any]
    seconds: float
    command: str = "vqcodec bench rd"
    """The command line that gives this run (its options; the folders are named apart)."""
    files: list[Path] = field(default_factory=list)


def run_rd(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    limit: int | None = None,
    models: Sequence[str] = (),
    qualities: Sequence[float] = (),
    codecs: Sequence[str] = CODECS,
    effort: int = 0,
    progress: bool = True,
) -> Report:
    """Run the codecs on the images of ``data`` (the first ``limit``, sorted); write the outputs to ``out``.

    ``models``: vqcodec models (bundled names or files), none meaning every bundled model, each run at
    every one of ``qualities`` (none: ``SWEEP_QUALITIES``) and ``effort``, one operating point per pair.
    Writes ``KEY.json`` per codec, ``results.md`` and ``rd.png``.
    """
    from tqdm import tqdm

    from vqcodec.imageio import load_image
    from vqcodec.train.data import list_images

    start = time.perf_counter()
    paths = list_images(data)[:limit]
    images = [load_image(path).rgb for path in paths]
    loaded = load_models(models) if "vqcodec" in codecs else []
    adapters, notes = make_adapters(codecs, loaded, qualities or list(SWEEP_QUALITIES), effort)

    total = sum(len(adapter.settings) for adapter in adapters) * len(images)
    curves = []
    with tqdm(total=total, unit="image", disable=not progress, dynamic_ncols=True) as bar:
        for adapter in adapters:
            points = []
            for setting in adapter.settings:
                bar.set_description(f"{adapter.key} {adapter.setting_name} {adapter.label(setting)}")
                points.append(_measure(adapter, setting, images, bar.update))
            points.sort(key=lambda point: point.bpp)
            curves.append(Curve(adapter.key, adapter.name, adapter.description, adapter.setting_name, points))

    if not curves:
        raise ValueError("none of the codecs asked for can run here: " + " ".join(notes))
    baselines = [curve for curve in curves if not is_vqcodec(curve)]
    comparison = {curve.key: compare(curve, baselines) for curve in curves if is_vqcodec(curve)}
    seconds = time.perf_counter() - start
    command = command_line(limit, models, qualities, codecs, effort)
    report = Report(
        Path(data), [p.name for p in paths], curves, comparison, notes, machine_info(), seconds, command
    )
    _write(report, Path(out))
    return report


def command_line(
    limit: int | None, models: Sequence[str], qualities: Sequence[float], codecs: Sequence[str], effort: int
) -> str:
    """``vqcodec bench rd`` with the options that give a run of these arguments."""
    options = [f"--limit {limit}"] if limit else []
    options += [f"--model {model}" for model in models]
    options += [f"--quality {quality:g}" for quality in qualities]
    options += [f"--effort {effort}"] if effort != DEFAULT_EFFORT else []
    options += [f"--codecs {','.join(codecs)}"] if list(codecs) != list(CODECS) else []
    return " ".join(["vqcodec bench rd", *options])


def _measure(
    adapter: Adapter, setting: Any, images: list[np.ndarray], advance: Callable[[int], object]
) -> Point:
    """Encode and decode every image at one setting; the mean of the per-image values.

    An untimed round trip of a small crop first keeps one-time costs (library set-up, first-call
    allocations) out of the first image's times.
    """
    adapter.decode(
        adapter.encode(np.ascontiguousarray(images[0][:WARM_UP_SIDE, :WARM_UP_SIDE]), setting), setting
    )
    rows = []
    extras = []
    for rgb in images:
        tick = time.perf_counter()
        data = adapter.encode(rgb, setting)
        encoded = time.perf_counter()
        decoded = adapter.decode(data, setting)
        decode_seconds = time.perf_counter() - encoded
        height, width = rgb.shape[:2]
        bpp = 8 * adapter.rate_bytes(data) / (height * width)
        quality = metrics.psnr(rgb, decoded.rgb), metrics.ms_ssim(rgb, decoded.rgb)
        rows.append((bpp, *quality, encoded - tick, decode_seconds))
        extras.append(decoded.extra)
        advance(1)
    means = np.mean(np.array(rows, dtype=np.float64), axis=0).tolist()
    return Point(adapter.label(setting), *means, extra=adapter.summarise(extras))


# --- comparisons --------------------------------------------------------------------------------------


def compare(vq: Curve, others: list[Curve]) -> dict[str, Any]:
    """vqcodec against each other codec: at each operating point's rate, and by BD-rate over vqcodec's
    curve (None when it has fewer than two distinct points)."""
    distinct = {(point.bpp, point.psnr) for point in vq.points}
    return {
        "at_rate": [
            {"setting": point.setting, "bpp": point.bpp, "rows": [_at_rate(point, other) for other in others]}
            for point in vq.points
        ],
        "bd_rate": [_bd_rates(vq, other) for other in others] if len(distinct) >= 2 else None,
    }


def _bd_rates(vq: Curve, other: Curve) -> dict[str, Any]:
    """BD-rate of vqcodec against ``other`` in %, at equal PSNR and equal MS-SSIM (dB); None if undefined."""
    row: dict[str, Any] = {"codec": other.key}
    for name, column in (("psnr", "psnr"), ("ms_ssim", "ms_ssim_db")):
        try:
            row[f"bd_rate_{name}"] = metrics.bd_rate(
                other.column("bpp"), other.column(column), vq.column("bpp"), vq.column(column)
            )
        except ValueError as error:
            row[f"bd_rate_{name}"] = None
            row[f"note_{name}"] = str(error)
    return row


def _at_rate(point: Point, other: Curve) -> dict[str, Any]:
    """``other`` at vqcodec's bpp (linear in bpp), and the bits it needs for vqcodec's quality.

    None where vqcodec's bpp or quality lies outside the range ``other``'s settings cover.
    """
    bpp = other.column("bpp")
    psnr = metrics.value_at_rate(bpp, other.column("psnr"), point.bpp)
    ms_ssim = metrics.value_at_rate(bpp, other.column("ms_ssim"), point.bpp)
    rate_psnr = metrics.rate_at_value(bpp, other.column("psnr"), point.psnr)
    rate_ms_ssim = metrics.rate_at_value(bpp, other.column("ms_ssim_db"), point.ms_ssim_db)
    return {
        "codec": other.key,
        "psnr": psnr,
        "delta_psnr": None if psnr is None else point.psnr - psnr,
        "ms_ssim": ms_ssim,
        "delta_ms_ssim_db": None if ms_ssim is None else point.ms_ssim_db - metrics.ms_ssim_db(ms_ssim),
        "bpp_at_equal_psnr": rate_psnr,
        "rate_percent_psnr": None if rate_psnr is None else 100.0 * (point.bpp / rate_psnr - 1.0),
        "bpp_at_equal_ms_ssim": rate_ms_ssim,
        "rate_percent_ms_ssim": None if rate_ms_ssim is None else 100.0 * (point.bpp / rate_ms_ssim - 1.0),
    }


# --- outputs -------------------------------------------------------------------------------------------


def _write(report: Report, out: Path) -> None:
    """The JSON files, results.md and, when matplotlib is installed, rd.png (else a note says why not)."""
    from vqcodec.bench.plot import plot_rd

    plotting = importlib.util.find_spec("matplotlib") is not None
    if not plotting:
        report.notes.append("rd.png not written: matplotlib is not installed (pip install 'vqcodec[bench]').")
    common = {
        "dataset": str(report.data),
        "images": report.images,
        "command": report.command,
        "machine": report.machine,
    }
    files: dict[str, Any] = {}
    for curve in report.curves:
        extra = {"comparison": report.comparison[curve.key]} if curve.key in report.comparison else {}
        files[f"{curve.key}.json"] = curve.to_json({**common, **extra})
    earlier = sorted(path.name for path in out.glob("*.json") if path.name not in files and _is_curve(path))
    if earlier:
        report.notes.append(f"Curves of an earlier run in this folder, not this run's: {', '.join(earlier)}.")
    files["results.md"] = format_markdown(report)
    report.files += save(out, files)
    if plotting:
        figure = out / "rd.png"
        plot_rd(report.curves, figure, f"{report.data.name} ({len(report.images)} images)")
        report.files.append(figure)


def _is_curve(path: Path) -> bool:
    """Whether ``path`` holds a curve that ``bench rd`` wrote (``Curve.to_json``)."""
    try:
        return "dataset" in json.loads(path.read_text(encoding="utf-8")).get("bench", {})
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def format_markdown(report: Report) -> str:
    """The whole report as markdown: vqcodec, the comparison, every codec, the notes."""
    m = report.machine
    lines = [
        f"# vqcodec benchmark: {report.data.name} ({len(report.images)} images)",
        "",
        f"{run_line(m, threads=True)}, Python {m['python']}, Pillow {m['pillow']};"
        f" `{report.command}` on `{report.data}`, {report.seconds:.0f} s in all.",
        "",
        "bpp: bytes of each compressed file x 8 / (H x W). PSNR: RGB, 8-bit, peak 255, over all pixels"
        " and channels. MS-SSIM: RGB (the mean over channels of each channel's MS-SSIM);"
        " dB = -10 log10(1 - MS-SSIM). Every number is the mean over the images of the per-image values;"
        " times are wall-clock seconds per image on the machine above, from RGB pixels in memory to the"
        " compressed bytes and back.",
        "",
    ]
    names = {curve.key: curve.name for curve in report.curves}
    compared = any(not is_vqcodec(curve) for curve in report.curves)
    for vq in (curve for curve in report.curves if is_vqcodec(curve)):
        lines += _vqcodec_table(vq)
        if compared:
            lines += _comparison_table(vq.name, report.comparison[vq.key], names)
    lines += ["## Every codec", ""]
    for curve in report.curves:
        lines += [f"### {curve.name}", "", curve.description, ""]
        header = [
            curve.setting_name,
            "bpp",
            "PSNR (dB)",
            "MS-SSIM",
            "MS-SSIM (dB)",
            "encode (s)",
            "decode (s)",
        ]
        lines += table(header, "lrrrrrr", (_codec_row(point) for point in curve.points))
        lines.append("")
    if report.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    return "\n".join(lines)


def _codec_row(p: Point) -> list[str]:
    return [
        p.setting,
        f"{p.bpp:.4f}",
        f"{p.psnr:.3f}",
        f"{p.ms_ssim:.5f}",
        f"{p.ms_ssim_db:.3f}",
        f"{p.encoding_time:.3f}",
        f"{p.decoding_time:.3f}",
    ]


def _vqcodec_table(vq: Curve) -> list[str]:
    names = list(vq.points[0].extra["bits_per_level"])
    header = ["operating point", "bpp", "PSNR (dB)", "MS-SSIM", "encode (s)", "decode (s)"]
    header += [f"bits {name}" for name in names]
    header += ["of raw bits", "bpd file", "bpd ideal", "coder overhead", "file overhead"]
    rows = []
    for p in vq.points:
        e = p.extra
        rows.append(
            [p.setting, f"{p.bpp:.4f}", f"{p.psnr:.3f}", f"{p.ms_ssim:.5f}"]
            + [f"{p.encoding_time:.2f}", f"{p.decoding_time:.2f}"]
            + [f"{e['bits_per_level'][name]:.0f} ({e['bits_per_code'][name]:.3f}/code)" for name in names]
            + [f"{e['prior_bits_of_raw_percent']:.1f} %", f"{e['bpd_file']:.5f}", f"{e['bpd_ideal']:.5f}"]
            + [f"{e['coder_overhead_percent']:+.3f} %", f"{e['file_overhead_percent']:+.3f} %"]
        )
    return [
        f"## {vq.name}",
        "",
        vq.description,
        "",
        *table(header, "l" + "r" * (len(header) - 1), rows),
        "",
        "Operating point: model and `--quality`. Bits per level: ideal bits (-sum log2 p) of each level's"
        " codes per image, as `vqcodec info` reports them; of raw bits: all levels' ideal bits over the"
        " bits of the codes sent raw (sum of log2 K). Bits per dimension: bits / (H x W x 3), of the files"
        " and of the ideal code lengths; the coder's overhead is the range-coded payload over the ideal"
        " bits; the file's adds the container.",
        "",
    ]


def _comparison_table(name: str, comparison: dict[str, Any], names: dict[str, str]) -> list[str]:
    header = ["operating point", "bpp", "codec", "PSNR (dB)", "Δ PSNR (dB)", "MS-SSIM", "Δ MS-SSIM (dB)"]
    header += ["bpp at equal PSNR", "rate Δ", "bpp at equal MS-SSIM", "rate Δ"]
    rows = [
        [point["setting"], f"{point['bpp']:.4f}", names[r["codec"]], number(r["psnr"], 3)]
        + [number(r["delta_psnr"], 3, sign=True), number(r["ms_ssim"], 5)]
        + [number(r["delta_ms_ssim_db"], 3, sign=True), number(r["bpp_at_equal_psnr"], 4)]
        + [number(r["rate_percent_psnr"], 1, " %", sign=True), number(r["bpp_at_equal_ms_ssim"], 4)]
        + [number(r["rate_percent_ms_ssim"], 1, " %", sign=True)]
        for point in comparison["at_rate"]
        for r in point["rows"]
    ]
    lines = [
        f"## {name} against each codec at each operating point's rate",
        "",
        "Each codec's PSNR and MS-SSIM interpolated linearly in bpp at the operating point's bpp (Δ:"
        " vqcodec minus the codec), and the bpp each codec needs for the point's PSNR and MS-SSIM"
        " (log-rate linear in quality) with rate Δ = vqcodec's bpp / that bpp - 1 (negative: vqcodec"
        " needs fewer bits). Empty: outside the range the codec's settings cover.",
        "",
        *table(header, "lrl" + "r" * 8, rows),
        "",
    ]
    if comparison["bd_rate"] is None:
        return lines + ["One operating point: no Bjøntegaard delta rate (it needs a curve).", ""]
    return lines + _bd_rate_table(name, comparison["bd_rate"], names)


def _bd_rate_table(name: str, bd_rates: list[dict[str, Any]], names: dict[str, str]) -> list[str]:
    rows = [
        [names[row["codec"]]]
        + [number(row[f"bd_rate_{name}"], 2, " %", sign=True) for name in ("psnr", "ms_ssim")]
        for row in bd_rates
    ]
    notes = [
        f"- {names[row['codec']]}: {row[key]}"
        for row in bd_rates
        for key in ("note_psnr", "note_ms_ssim")
        if key in row
    ]
    return [
        f"## {name} against each codec: Bjøntegaard delta rate",
        "",
        "Mean bitrate difference of vqcodec at equal quality over the quality range both curves cover"
        " (log-rate interpolated piecewise-cubically, PCHIP); negative: vqcodec needs fewer bits.",
        "",
        *table(["codec", "BD-rate at equal PSNR", "BD-rate at equal MS-SSIM (dB)"], "lrr", rows),
        "",
        *(["Undefined BD-rates:", *notes, ""] if notes else []),
    ]
