"""The benchmark runner: every codec at every setting on every image, then JSON files, a table and a plot.

Per setting the images' bpp, PSNR, MS-SSIM and encode/decode seconds are averaged (the mean of the
per-image values, as CompressAI reports them). vqcodec is compared with each other codec at the
bitrate of each of its operating points, and by Bjøntegaard delta rate over its curve when it has
two or more (a BD-rate needs a curve). The priors' NLL on training and validation crops is the
paper's Table 1.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqcodec.bench import metrics
from vqcodec.bench.codecs import CODECS, Adapter, make_adapters
from vqcodec.quality import SWEEP_QUALITIES

DEFAULT_NLL_IMAGES = 16
NLL_CROP = 256
"""Side of the square crops whose codes the priors' NLL is measured on."""
WARM_UP_SIDE = 64
"""Side of the crop that warms every codec setting up before it is timed (a multiple of any model's)."""


def shared_data(name: str) -> Path | None:
    """``../shared/data/NAME`` beside the working directory, else beside the repository; None if absent."""
    repository = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), repository):
        folder = base.parent / "shared" / "data" / name
        if folder.is_dir():
            return folder
    return None


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
class NLLRow:
    """A prior's mean NLL in bits per code on crops of the training and the validation images."""

    model: str
    level: str
    train: float | None
    val: float | None


@dataclass
class Report:
    """Everything a run measured, and where it wrote it."""

    data: Path
    images: list[str]
    curves: list[Curve]
    comparison: dict[str, Any]
    nll: list[NLLRow]
    notes: list[str]
    machine: dict[str, Any]
    seconds: float
    files: list[Path] = field(default_factory=list)


def run_benchmark(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    limit: int | None = None,
    models: Sequence[str] = (),
    qualities: Sequence[float] = (),
    codecs: Sequence[str] = CODECS,
    nll_images: int = DEFAULT_NLL_IMAGES,
    train_data: str | os.PathLike[str] | None = None,
    val_data: str | os.PathLike[str] | None = None,
    progress: bool = True,
    effort: int = 0,
) -> Report:
    """Run the codecs on the images of ``data`` (the first ``limit``, sorted); write the outputs to ``out``.

    ``models``: vqcodec models (bundled names or files), none meaning every bundled model, each run at
    every one of ``qualities`` (none: ``SWEEP_QUALITIES``) and ``effort``, one operating point per pair.
    ``nll_images``
    images of ``train_data`` and ``val_data`` (0: none) measure the priors' NLL. Writes ``KEY.json``
    per codec, ``results.md`` and ``rd.png``.
    """
    from tqdm import tqdm

    from vqcodec.imageio import load_image
    from vqcodec.train.data import list_images

    start = time.perf_counter()
    paths = list_images(data)[:limit]
    images = [load_image(path).rgb for path in paths]
    loaded = _load_models(models) if "vqcodec" in codecs else []
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

    vq = next((curve for curve in curves if curve.key == "vqcodec"), None)
    comparison = compare(vq, [curve for curve in curves if curve is not vq]) if vq else {}
    nll = _nll_table(loaded, nll_images, train_data, val_data, notes)
    seconds = time.perf_counter() - start
    report = Report(
        Path(data), [p.name for p in paths], curves, comparison, nll, notes, machine_info(), seconds
    )
    _write(report, Path(out))
    return report


def _load_models(names: Sequence[str]) -> list[tuple[str, Any]]:
    """(label, codec) for each model; every bundled model when none is named."""
    import vqcodec
    from vqcodec.zoo import list_models

    names = list(names) or [info.name for info in list_models()]
    if not names:
        raise ValueError(
            "no bundled vqcodec models: name a model file with --model, or leave vqcodec out of --codecs"
        )
    loaded: list[tuple[str, Any]] = []
    for name in names:
        label = Path(name).stem if name.endswith(".safetensors") else name
        if any(label == other for other, _ in loaded):
            label = name
        loaded.append((label, vqcodec.load_model(name)))
    return loaded


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


# --- the priors' NLL (Table 1 of the paper) ----------------------------------------------------------


def _nll_table(
    models: list[tuple[str, Any]],
    n_images: int,
    train_data: str | os.PathLike[str] | None,
    val_data: str | os.PathLike[str] | None,
    notes: list[str],
) -> list[NLLRow]:
    if not models or n_images <= 0:
        return []
    folders: dict[str, Path | None] = {}
    for split, given in (("train", train_data), ("val", val_data)):
        folders[split] = Path(given) if given is not None else shared_data(split)
        if folders[split] is None or not folders[split].is_dir():
            notes.append(
                f"Prior NLL on {split} crops skipped: no {split} image folder (../shared/data/{split})."
            )
            folders[split] = None
    if not any(folders.values()):
        return []
    from vqcodec.models.config import level_names

    rows = []
    for label, codec in models:
        bits = {
            split: prior_nll(codec, folder, n_images) if folder else None for split, folder in folders.items()
        }
        for level, name in enumerate(level_names(len(codec.model.priors))):
            train, val = (None if bits[split] is None else bits[split][level] for split in ("train", "val"))
            rows.append(NLLRow(label, name, train, val))
    return rows


def prior_nll(
    codec: Any, folder: Path, n_images: int, crop: int = NLL_CROP, batch_size: int = 4
) -> list[float]:
    """Each prior's mean float NLL in bits per code on one seeded random crop of ``n_images`` images.

    The images are spread evenly over the folder's sorted list; the crops are drawn as the training
    code caches draw theirs (random scale in [0.5, 1], position and flip), so training and
    validation numbers compare as in the paper's Table 1.
    """
    import torch

    from vqcodec.train.data import ImageFolder, derive_seed
    from vqcodec.train.dist import Dist
    from vqcodec.train.stage2 import nll_bits

    dataset = ImageFolder(folder, crop)
    indices = np.linspace(0, len(dataset) - 1, min(n_images, len(dataset))).round().astype(int)
    keys = [(int(i), derive_seed("bench-nll", int(i))) for i in indices]
    model = codec.model
    levels: list[list[torch.Tensor]] = [[] for _ in model.priors]
    with torch.inference_mode():
        for start in range(0, len(keys), batch_size):
            batch = torch.stack([dataset[key] for key in keys[start : start + batch_size]]).to(codec.device)
            for level, codes in enumerate(model.vqvae.encode(batch)):
                levels[level].append(codes)
    codes = [torch.cat(level) for level in levels]
    rows = torch.arange(len(keys))
    env = Dist(0, 1, codec.device)
    bits = []
    for level, prior in enumerate(model.priors):
        bits.append(nll_bits(prior, codes[: level + 1], rows, batch_size, env, "fp32"))
        prior.eval()  # nll_bits leaves the prior in training mode; the loaded model is shared
    return bits


# --- outputs -------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """The CPU, cores, library versions and date a run's times belong to."""
    import torch
    from PIL import Image

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "pillow": Image.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _write(report: Report, out: Path) -> None:
    """The JSON files, results.md and, when matplotlib is installed, rd.png (else a note says why not)."""
    from vqcodec.bench.plot import plot_rd

    plotting = importlib.util.find_spec("matplotlib") is not None
    if not plotting:
        report.notes.append("rd.png not written: matplotlib is not installed (pip install 'vqcodec[bench]').")
    out.mkdir(parents=True, exist_ok=True)
    common = {"dataset": str(report.data), "images": report.images, "machine": report.machine}
    for curve in report.curves:
        bench = dict(common)
        if curve.key == "vqcodec":
            bench["comparison"] = report.comparison
            bench["priors_nll"] = [asdict(row) for row in report.nll]
        path = out / f"{curve.key}.json"
        path.write_text(json.dumps(curve.to_json(bench), indent=2) + "\n", encoding="utf-8")
        report.files.append(path)
    markdown = out / "results.md"
    markdown.write_text(format_markdown(report), encoding="utf-8")
    report.files.append(markdown)
    if plotting:
        figure = out / "rd.png"
        plot_rd(report.curves, figure, f"{report.data.name} ({len(report.images)} images)")
        report.files.append(figure)


def format_markdown(report: Report) -> str:
    """The whole report as markdown: vqcodec, the comparison, the priors' NLL, every codec, notes."""
    m = report.machine
    lines = [
        f"# vqcodec benchmark: {report.data.name} ({len(report.images)} images)",
        "",
        f"Run {m['date']} on {m['cpu']} ({m['cores']} cores), torch {m['torch']}"
        f" ({m['torch_threads']} threads), Python {m['python']}, Pillow {m['pillow']};"
        f" {report.seconds:.0f} s in all.",
        "",
        "bpp: bytes of each compressed file x 8 / (H x W). PSNR: RGB, 8-bit, peak 255, over all pixels"
        " and channels. MS-SSIM: RGB (the mean over channels of each channel's MS-SSIM);"
        " dB = -10 log10(1 - MS-SSIM). Every number is the mean over the images of the per-image values;"
        " times are wall-clock seconds per image on the machine above, from RGB pixels in memory to the"
        " compressed bytes and back.",
        "",
    ]
    vq = next((curve for curve in report.curves if curve.key == "vqcodec"), None)
    if vq is not None:
        lines += _vqcodec_table(vq)
    if report.comparison:
        lines += _comparison_table(report.comparison, {curve.key: curve.name for curve in report.curves})
    if report.nll:
        lines += [
            "## Priors: NLL in bits per code (the paper's Table 1)",
            "",
            f"One seeded random {NLL_CROP}x{NLL_CROP} crop (scale 0.5-1, flip) of each of up to"
            " `--nll-images` images, spread over the training and the validation folders; float priors.",
            "",
            "| model | level | train | val |",
            "|---|---|---:|---:|",
        ]
        lines += [f"| {r.model} | {r.level} | {_num(r.train, 4)} | {_num(r.val, 4)} |" for r in report.nll]
        lines.append("")
    lines += ["## Every codec", ""]
    for curve in report.curves:
        lines += [
            f"### {curve.name}",
            "",
            curve.description,
            "",
            f"| {curve.setting_name} | bpp | PSNR (dB) | MS-SSIM | MS-SSIM (dB) | encode (s) | decode (s) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {p.setting} | {p.bpp:.4f} | {p.psnr:.3f} | {p.ms_ssim:.5f} | {p.ms_ssim_db:.3f}"
            f" | {p.encoding_time:.3f} | {p.decoding_time:.3f} |"
            for p in curve.points
        ]
        lines.append("")
    if report.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    return "\n".join(lines)


def _vqcodec_table(vq: Curve) -> list[str]:
    names = list(vq.points[0].extra["bits_per_level"])
    head = " | ".join(f"bits {name}" for name in names)
    lines = [
        "## vqcodec",
        "",
        vq.description,
        "",
        f"| operating point | bpp | PSNR (dB) | MS-SSIM | encode (s) | decode (s) | {head} | of raw bits"
        " | bpd file | bpd ideal | coder overhead | file overhead |",
        "|---|" + "---:|" * (10 + len(names)),
    ]
    for p in vq.points:
        e = p.extra
        bits = " | ".join(
            f"{e['bits_per_level'][name]:.0f} ({e['bits_per_code'][name]:.3f}/code)" for name in names
        )
        lines.append(
            f"| {p.setting} | {p.bpp:.4f} | {p.psnr:.3f} | {p.ms_ssim:.5f} | {p.encoding_time:.2f}"
            f" | {p.decoding_time:.2f} | {bits} | {e['prior_bits_of_raw_percent']:.1f} %"
            f" | {e['bpd_file']:.5f} | {e['bpd_ideal']:.5f}"
            f" | {e['coder_overhead_percent']:+.3f} % | {e['file_overhead_percent']:+.3f} % |"
        )
    lines += [
        "",
        "Operating point: model and `--quality`. Bits per level: ideal bits (-sum log2 p) of each level's"
        " codes per image, as `vqcodec info` reports them; of raw bits: all levels' ideal bits over the"
        " bits of the codes sent raw (sum of log2 K). Bits per dimension: bits / (H x W x 3), of the files"
        " and of the ideal code lengths; the coder's overhead is the range-coded payload over the ideal"
        " bits; the file's adds the container.",
        "",
    ]
    return lines


def _comparison_table(comparison: dict[str, Any], names: dict[str, str]) -> list[str]:
    lines = [
        "## vqcodec against each codec at each operating point's rate",
        "",
        "Each codec's PSNR and MS-SSIM interpolated linearly in bpp at the operating point's bpp (Δ:"
        " vqcodec minus the codec), and the bpp each codec needs for the point's PSNR and MS-SSIM"
        " (log-rate linear in quality) with rate Δ = vqcodec's bpp / that bpp - 1 (negative: vqcodec"
        " needs fewer bits). Empty: outside the range the codec's settings cover.",
        "",
        "| operating point | bpp | codec | PSNR (dB) | Δ PSNR (dB) | MS-SSIM | Δ MS-SSIM (dB)"
        " | bpp at equal PSNR | rate Δ | bpp at equal MS-SSIM | rate Δ |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in comparison["at_rate"]:
        for r in point["rows"]:
            lines.append(
                f"| {point['setting']} | {point['bpp']:.4f} | {names[r['codec']]} | {_num(r['psnr'], 3)}"
                f" | {_num(r['delta_psnr'], 3, sign=True)} | {_num(r['ms_ssim'], 5)}"
                f" | {_num(r['delta_ms_ssim_db'], 3, sign=True)} | {_num(r['bpp_at_equal_psnr'], 4)}"
                f" | {_num(r['rate_percent_psnr'], 1, ' %', sign=True)}"
                f" | {_num(r['bpp_at_equal_ms_ssim'], 4)}"
                f" | {_num(r['rate_percent_ms_ssim'], 1, ' %', sign=True)} |"
            )
    lines.append("")
    if comparison["bd_rate"] is None:
        return lines + ["One operating point: no Bjøntegaard delta rate (it needs a curve).", ""]
    lines += [
        "## vqcodec against each codec: Bjøntegaard delta rate",
        "",
        "Mean bitrate difference of vqcodec at equal quality over the quality range both curves cover"
        " (log-rate interpolated piecewise-cubically, PCHIP); negative: vqcodec needs fewer bits.",
        "",
        "| codec | BD-rate at equal PSNR | BD-rate at equal MS-SSIM (dB) |",
        "|---|---:|---:|",
    ]
    notes = []
    for row in comparison["bd_rate"]:
        lines.append(
            f"| {names[row['codec']]} | {_num(row['bd_rate_psnr'], 2, ' %', sign=True)}"
            f" | {_num(row['bd_rate_ms_ssim'], 2, ' %', sign=True)} |"
        )
        notes += [
            f"- {names[row['codec']]}: {row[key]}" for key in ("note_psnr", "note_ms_ssim") if key in row
        ]
    return lines + [""] + (["Undefined BD-rates:", *notes, ""] if notes else [])


def _num(value: float | None, digits: int, unit: str = "", sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "" if value is None else str(value)
    return f"{value:{'+' if sign else ''}.{digits}f}{unit}"
