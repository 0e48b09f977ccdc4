"""Speed and peak memory of vqcodec's encoder and decoder on Kodak and on a 3840x2160 image.

Encoding and decoding each run in a fresh child process (``vqcodec.bench.child``) that loads the
model, warms it up untimed, then times every image from pixels in memory to bytes and back. The
3840x2160 image is kodim05 resized up with Lanczos; it is smoother than a real 4K photograph, so its
codes are somewhat cheaper to code, but the work of the priors depends on the map size only. The same
run times vqcodec against bmshj2018-factorized (CompressAI's, or without it its transforms) image by
image in one process, for the speed targets' ratios; CompressAI's codecs on their own where it
is installed; the products' compute floor (``vqcodec.bench.baselines``); batch decoding
(``decompress_many``) for the throughput; and the images coded whole (tile 0) for what the tiles cost
in bits and save in time. Writes ``speed.json`` and ``results.md``; on the CPU also the threads under
a parallel load (``threads.json``, ``threads.md``).

``run_threads`` alone: the first 4 Kodak images coded with torch's default threads waiting as OpenMP
does by default (long spins), with short spins (vqcodec's default, ``vqcodec/threads.py``), with
passive waits, and with one thread, on an idle machine and beside busy processes. ``run_large``
alone: kodim05 resized to a camera's size, for the time and peak memory near the pixel limit
(``large.json``, ``large.md``).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from vqcodec.bench.child import Settings, run_child
from vqcodec.bench.report import machine_info, run_line, save, table
from vqcodec.threads import SHORT_SPIN, SPIN_COUNT, WAIT_POLICY

UHD = (3840, 2160)
THREADS_IMAGES = 4
"""Kodak images the threads' test codes."""

DEFAULT_WAITS = {SPIN_COUNT: SHORT_SPIN}
"""The OpenMP variables a vqcodec process has unless its user sets them (``threads.spin_briefly``)."""

LOAD_CASES: dict[str, tuple[dict[str, str], int | None]] = {
    "default threads, OpenMP's long spins (before)": ({}, None),
    f"default threads, short spins ({SPIN_COUNT}={SHORT_SPIN}: the default)": (DEFAULT_WAITS, None),
    "default threads, passive waits (OMP_WAIT_POLICY=PASSIVE)": ({WAIT_POLICY: "PASSIVE"}, None),
    "1 thread (--threads 1)": (DEFAULT_WAITS, 1),
}
"""What ``threads_under_load`` compares: the OpenMP variables, and the thread count (None: torch's)."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_speed(
    kodak: list[Path], out: Path, settings: Settings, uhd_source: Path | None, load: int = 3
) -> tuple[str, list[Path]]:
    """Time ``kodak``, and ``uhd_source`` resized to 3840x2160 unless it is None; write the results.

    On the CPU, then the threads' test beside ``load`` busy processes (0: none). Returns the
    markdown (both) and the files.
    """
    from vqcodec.bench.baselines import compressai_times, compute_floor

    cpu = settings.device == "cpu"
    with tempfile.TemporaryDirectory() as scratch:
        copies = [Path(scratch) / path.name for path in kodak]
        for path, copy in zip(kodak, copies, strict=True):
            copy.write_bytes(path.read_bytes())
        sets = [(f"Kodak ({len(kodak)} images, 768x512)", copies)]
        if uhd_source is not None:
            uhd = _resized(uhd_source, *UHD, scratch)
            sets.append((f"{UHD[0]}x{UHD[1]} ({uhd_source.stem} resized)", [uhd]))
        rows = [time_images(name, paths, settings) for name, paths in sets]
        report = {
            "quality": settings.quality,
            "tile": settings.tile,
            "model": settings.model,
            "device": settings.device if cpu else f"{settings.device} ({_gpu_name()})",
            "machine": machine_info(),
            "rows": rows,
            "batch_decode": batch_decode(copies, settings),
            "compressai": compressai_times(copies) if cpu else {},
            "versus": versus_bmshj2018(copies, settings, allocator=False) if cpu else {},
            "versus_allocator": versus_bmshj2018(copies, settings, allocator=True) if cpu else {},
            "compute_floor": compute_floor(settings.model, settings.device),
        }
    text = speed_markdown(report)
    files = save(out, {"speed.json": report, "results.md": text})
    if cpu and load:
        threads_text, threads_files = run_threads(kodak[:THREADS_IMAGES], out, settings, load)
        text, files = text + "\n" + threads_text, files + threads_files
    return text, files


def time_images(name: str, paths: list[Path], settings: Settings) -> dict[str, Any]:
    """Encode and decode ``paths`` in tiles and, unless the tiles are off, whole: one row of the table."""
    encoded = run_child("encode", paths, settings, DEFAULT_WAITS)
    decoded = run_child("decode", paths, settings, DEFAULT_WAITS)
    whole = {}
    if settings.tile:
        whole_settings = Settings(**{**vars(settings), "tile": 0})
        whole_encoded = run_child("encode", paths, whole_settings, DEFAULT_WAITS)
        whole_decoded = run_child("decode", paths, whole_settings, DEFAULT_WAITS)
        whole = {
            "whole_bytes": whole_encoded["bytes"],
            "whole_encode_s": statistics.median(whole_encoded["seconds"]),
            "whole_decode_s": statistics.median(whole_decoded["seconds"]),
        }
    row = {
        "image": name,
        "encode_s": statistics.median(encoded["seconds"]),
        "decode_s": statistics.median(decoded["seconds"]),
        "encode_seconds": encoded["seconds"],
        "decode_seconds": decoded["seconds"],
        "encode_peak_mb": encoded["peak_mb"],
        "decode_peak_mb": decoded["peak_mb"],
        "encode_gpu_mb": encoded["gpu_peak_mb"],
        "decode_gpu_mb": decoded["gpu_peak_mb"],
        "bytes": encoded["bytes"],
        **whole,
    }
    say(f"{name}: encode {row['encode_s']:.2f} s, decode {row['decode_s']:.2f} s")
    return row


def versus_bmshj2018(paths: list[Path], settings: Settings, allocator: bool) -> dict[str, Any]:
    """vqcodec's encode and decode times as multiples of bmshj2018-factorized's, measured alternately in
    one process (``child.versus``), whose malloc is set as the command's (``allocator``) or left as a
    plain Python process has it: the medians of the per-image ratios, and their quartiles."""
    sides = run_child("versus", paths, settings, DEFAULT_WAITS, allocator=allocator)
    result: dict[str, Any] = {"baseline": sides["baseline"], "images": len(paths), "allocator": allocator}
    for side in ("encode", "decode"):
        ratios = [ours / theirs for ours, theirs in zip(sides[side], sides[f"base_{side}"], strict=True)]
        quartiles = statistics.quantiles(ratios, n=4)
        result[side] = {
            "ratio": statistics.median(ratios),
            "ratio_quartiles": [quartiles[0], quartiles[2]],
            "vqcodec_s": statistics.median(sides[side]),
            "baseline_s": statistics.median(sides[f"base_{side}"]),
            "ratios": ratios,
        }
    encode, decode = result["encode"]["ratio"], result["decode"]["ratio"]
    where = "the command's allocator" if allocator else "a plain process"
    say(f"against bmshj2018-factorized, in {where}: encode {encode:.2f}x, decode {decode:.2f}x")
    return result


def batch_decode(paths: list[Path], settings: Settings) -> dict[str, Any]:
    """Seconds per image of ``decompress_many`` on the encoded ``paths``, ``settings.batch`` at a time."""
    by_size = sorted(paths, key=lambda path: Image.open(path).size)  # each batch of one size: one walk
    batched = run_child("decode-batch", by_size, settings, DEFAULT_WAITS)
    batch = {
        "files_per_batch": settings.batch,
        "seconds_per_image": sum(batched["seconds"]) / len(by_size),
        "peak_mb": batched["peak_mb"],
        "gpu_peak_mb": batched["gpu_peak_mb"],
    }
    say(f"batch decoding: {batch['seconds_per_image']:.2f} s per image")
    return batch


def threads_under_load(paths: list[Path], settings: Settings, load: int) -> dict[str, Any]:
    """Median encode and decode seconds of each of ``LOAD_CASES``, idle and beside ``load`` busy
    processes (a core each, as other work on a shared machine would)."""
    cases: dict[str, dict[str, dict[str, float]]] = {name: {} for name in LOAD_CASES}
    for condition, busy in (("idle", 0), ("loaded", load)):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            for name, (waits, threads) in LOAD_CASES.items():
                cases[name][condition] = {
                    f"{operation}_s": statistics.median(
                        run_child(operation, paths, settings, waits, threads)["seconds"]
                    )
                    for operation in ("encode", "decode")
                }
                say(f"{condition}, {name}: {cases[name][condition]}")
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    return {"images": len(paths), "load_processes": load, "cases": cases}


def run_threads(paths: list[Path], out: Path, settings: Settings, load: int) -> tuple[str, list[Path]]:
    """``threads_under_load`` on copies of ``paths``; writes ``threads.json`` and ``threads.md``."""
    with tempfile.TemporaryDirectory() as scratch:
        copies = [Path(scratch) / path.name for path in paths]
        for path, copy in zip(paths, copies, strict=True):
            copy.write_bytes(path.read_bytes())
        result = threads_under_load(copies, settings, load)
    text = threads_markdown(result, machine_info())
    return text, save(out, {"threads.json": result, "threads.md": text})


def run_large(source: Path, width: int, height: int, out: Path, settings: Settings) -> tuple[str, list[Path]]:
    """Encode and decode ``source`` resized to ``width`` x ``height``, each once in a fresh process."""
    with tempfile.TemporaryDirectory() as scratch:
        path = _resized(source, width, height, scratch)
        encoded = run_child("encode", [path], settings, DEFAULT_WAITS)
        decoded = run_child("decode", [path], settings, DEFAULT_WAITS)
    result = {
        "image": f"{source.name} resized to {width}x{height} ({width * height / 1e6:.1f} Mpx)",
        "encode_s": encoded["seconds"][0],
        "decode_s": decoded["seconds"][0],
        "encode_peak_mb": encoded["peak_mb"],
        "decode_peak_mb": decoded["peak_mb"],
        "bytes": encoded["bytes"][0],
    }
    text = large_markdown(result, machine_info(), f"{width}x{height}", settings)
    return text, save(out, {"large.json": result, "large.md": text})


def _resized(source: Path, width: int, height: int, folder: str) -> Path:
    path = Path(folder) / f"{source.stem}_{width}x{height}.png"
    image = Image.open(source).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    image.save(path, compress_level=1)
    return path


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


# --- markdown ------------------------------------------------------------------------------------------


def speed_markdown(report: dict[str, Any]) -> str:
    """The speed table, then the tiles' cost, CompressAI, batch decoding and the compute floor."""
    gpu = report["device"] != "cpu"
    coding = f"tiles of {report['tile']} pixels" if report.get("tile") else "whole code maps"
    header = ["image", "encode (s, median)", "decode (s, median)", "encode peak RSS", "decode peak RSS"]
    rows = []
    for row in report["rows"]:
        cells = [row["image"], f"{row['encode_s']:.2f}", f"{row['decode_s']:.2f}"]
        cells += [f"{row['encode_peak_mb'] / 1024:.2f} GB", f"{row['decode_peak_mb'] / 1024:.2f} GB"]
        if gpu:
            cells.append(f"{row['encode_gpu_mb'] / 1024:.2f} / {row['decode_gpu_mb'] / 1024:.2f} GB")
        rows.append(cells)
    lines = [
        "# vqcodec speed and memory",
        "",
        f"{run_line(report['machine'], threads=True)}, device {report['device']}; `vqcodec bench speed`,"
        f" model {report['model'] or 'default'}, quality {report['quality']}, {coding}.",
        "",
        *table(header + ["GPU peak (enc / dec)"] * gpu, "lrrrr" + "r" * gpu, rows),
        "",
    ]
    if report.get("tile"):
        lines += _tiles_section(report)
    lines += _compressai_section(report) + _throughput_section(report)
    return "\n".join(lines) + "\n"


def _tiles_section(report: dict[str, Any]) -> list[str]:
    header = ["image", "bytes, tiles", "bytes, whole", "tiles' bits cost", "decode (s), whole"]
    rows = []
    for row in report["rows"]:
        tiled, whole = sum(row["bytes"]), sum(row["whole_bytes"])
        rows.append(
            [
                row["image"],
                tiled,
                whole,
                f"{100 * (tiled / whole - 1):+.2f} %",
                f"{row['whole_decode_s']:.2f}",
            ]
            + [f"{row['decode_s'] / row['whole_decode_s']:.2f}"]
        )
    return [
        f"The files above are cut into tiles of {report['tile']} pixels, each coded as an independent"
        " image (`bitstream_spec/vqz.md` §5.2): the context the priors see ends at a tile's border, and"
        " the decoder runs the tiles' wavefronts side by side. The same images coded whole (`--tile 0`):",
        "",
        *table(header + ["decode time, tiles / whole"], "lrrrrr", rows),
        "",
    ]


def _ratios(versus: dict[str, Any]) -> str:
    """The encode and decode ratios of a ``versus_bmshj2018`` result, with their quartiles and medians."""
    return ", ".join(
        f"{side} **{versus[side]['ratio']:.2f}x** (quartiles {versus[side]['ratio_quartiles'][0]:.2f}"
        f"-{versus[side]['ratio_quartiles'][1]:.2f}; medians {versus[side]['vqcodec_s']:.2f} s against"
        f" {versus[side]['baseline_s']:.2f} s)"
        for side in ("encode", "decode")
    )


def _compressai_section(report: dict[str, Any]) -> list[str]:
    lines = []
    versus = report.get("versus")
    if versus:
        rounds = len(versus["encode"]["ratios"]) // versus["images"]
        lines += [
            f"Against {versus['baseline']}: both timed in one process, image by image over the"
            f" {versus['images']} Kodak images in {rounds} rounds, each side once first and once second, so"
            " that the machine's drift cancels. vqcodec's time as a multiple of bmshj2018-factorized's, the"
            f" median of the {len(versus['encode']['ratios'])} per-image ratios (the target: 1.0x),"
            f" in a plain Python process (glibc's malloc as it comes, both imported as libraries):"
            f" {_ratios(versus)}.",
            "",
        ]
    with_allocator = report.get("versus_allocator")  # absent from older runs
    if with_allocator:
        lines += [
            "The same in a process whose malloc keeps freed memory, as the `vqcodec` command sets it"
            f" (`vqcodec.allocator`), for both sides: {_ratios(with_allocator)}.",
            "",
        ]
    if report["compressai"]:
        version = next(iter(report["compressai"].values())).get("version")  # absent from older runs
        rows = [
            [name, f"{t['encode_s']:.2f}", f"{t['decode_s']:.2f}"] for name, t in report["compressai"].items()
        ]
        lines += [
            f"CompressAI{f' {version}' if version else ''} on the same Kodak images (random weights), timed"
            " apart from vqcodec:",
            "",
            *table(["architecture", "encode (s)", "decode (s)"], "lrr", rows),
        ]
    else:
        lines.append("CompressAI is not installed: its bmshj2018-factorized and mbt2018 were not timed.")
    return lines


def _throughput_section(report: dict[str, Any]) -> list[str]:
    batch, kodak, floor = report["batch_decode"], report["rows"][0], report["compute_floor"]
    gpu = f", {batch['gpu_peak_mb'] / 1024:.2f} GB on the GPU" if batch["gpu_peak_mb"] is not None else ""
    least = floor["kodak_floor_s"]
    least_text = f"{least:.2f} s" if least >= 0.1 else f"{least * 1000:.1f} ms"
    return [
        "",
        f"Batch decoding (`vqcodec.decompress_many`, {batch['files_per_batch']} Kodak files of one size at a"
        f" time): {batch['seconds_per_image']:.2f} s per image, {1 / batch['seconds_per_image']:.2f} images/s"
        f" ({kodak['decode_s'] / batch['seconds_per_image']:.1f}x the throughput of one at a time); peak"
        f" {batch['peak_mb'] / 1024:.2f} GB{gpu}.",
        "",
        f"The priors' matrix products take {floor['kodak_gmac']:.1f} G multiply-adds per Kodak image"
        f" (768x512); this machine multiplies large {floor['gemm']} matrices (the kind the priors' products"
        f" run as here) at {floor['gemm_gops']:.0f} G operations/s, so those products alone need at least"
        f" {least_text} of every Kodak decode (and encode): the floor of this model's exact inference here,"
        " before any other work.",
    ]


def threads_markdown(result: dict[str, Any], machine: dict[str, Any]) -> str:
    header = ["threads and waits", "encode, idle", "decode, idle", "encode, loaded", "decode, loaded"]
    rows = []
    for name, times in result["cases"].items():
        idle, loaded = times["idle"], times["loaded"]
        ratios = f"{loaded['encode_s'] / idle['encode_s']:.1f}x, {loaded['decode_s'] / idle['decode_s']:.1f}x"
        rows.append(
            [name, f"{idle['encode_s']:.2f}", f"{idle['decode_s']:.2f}", f"{loaded['encode_s']:.2f}"]
            + [f"{loaded['decode_s']:.2f}", ratios]
        )
    lines = [
        "# Threads under a parallel load",
        "",
        f"{run_line(machine)}; `vqcodec bench speed --only-load`: median seconds over {result['images']}"
        " Kodak images, each case in a fresh process, on an idle machine and beside"
        f" {result['load_processes']} processes that keep a core busy each.",
        "",
        *table(header + ["loaded / idle (encode, decode)"], "lrrrrr", rows),
    ]
    return "\n".join(lines) + "\n"


def large_markdown(result: dict[str, Any], machine: dict[str, Any], size: str, settings: Settings) -> str:
    rows = [
        ["encode", f"{result['encode_s']:.1f}", f"{result['encode_peak_mb'] / 1024:.2f} GB"],
        ["decode", f"{result['decode_s']:.1f}", f"{result['decode_peak_mb'] / 1024:.2f} GB"],
    ]
    lines = [
        "# A camera-sized image",
        "",
        f"{run_line(machine)}; `vqcodec bench speed --only-large {size}`, quality {settings.quality}, device"
        f" {settings.device}: {result['image']}, {result['bytes']} bytes.",
        "",
        *table(["", "seconds", "peak resident memory"], "lrr", rows),
    ]
    return "\n".join(lines) + "\n"
