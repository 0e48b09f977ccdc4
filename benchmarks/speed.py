"""Speed and peak memory of vqcodec's encoder and decoder on Kodak and on a 3840x2160 image.

    python benchmarks/speed.py [--data DIR] [--limit N] [--model NAME] [--device cuda] [--out DIR] [--no-4k]
                               [--batch N] [--tile PIXELS] [--load N] [--only-load] [--only-large WxH]

Encoding and decoding each run in a fresh child process that loads the model, warms it up on a small
crop (untimed), then times every image from pixels in memory to bytes and back, and reports its peak
resident memory (``ru_maxrss``: model and Python included) and, on a GPU, the peak of the memory torch
allocated there. The 3840x2160 image is kodim05 resized
up with Lanczos; it is smoother than a real 4K photograph, so its codes are somewhat cheaper to code,
but the work of the priors depends on the map size only. When CompressAI is installed, its
non-autoregressive bmshj2018-factorized and autoregressive mbt2018 (random weights: the time is the
architecture's) are timed on the same images in the same run, so that every comparison is a ratio on
one machine. Without it (it cannot be installed beside every torch), bmshj2018-factorized's analysis
and synthesis transforms, rebuilt in torch, give a lower bound on that codec's times. Batch decoding
(``decompress_many``, ``--batch`` Kodak files of one size at a time) gives the throughput. It also counts
the priors' float64 multiply-adds for a Kodak image and times a large float64 matrix product here: the
least time those products need, whatever the implementation. The files are cut into tiles of
``--tile`` pixels (the default's); the images are also coded whole (``--tile 0``) and decoded, for the
bits the tiles cost (the context they cut) and the time they save. Writes ``speed.json`` and
``results.md``.

Threads under a parallel load: the first 4 Kodak images (``--limit`` with ``--only-load``) are coded
with torch's default threads (one per core) waiting as OpenMP does by default (long spins: vqcodec
before it set ``GOMP_SPINCOUNT``), with short spins (vqcodec's default, ``vqcodec/threads.py``), with
passive waits, and with one thread, on an idle machine and beside ``--load`` processes that keep a core
busy each. Writes ``threads.json`` and ``threads.md``; ``--only-load`` runs nothing else.

``--only-large WxH`` encodes and decodes kodim05 resized to WxH once each, for the time and peak memory
of a camera-sized image (the pixel limit); writes ``large.json`` and ``large.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch  # before vqcodec, which would otherwise set GOMP_SPINCOUNT: each child gets run_child's
from PIL import Image

from vqcodec.quality import DEFAULT_TILE
from vqcodec.threads import SHORT_SPIN, SPIN_COUNT, WAIT_POLICY

UHD = (3840, 2160)
WARM_UP_SIDE = 64


DEFAULT_WAITS = {SPIN_COUNT: SHORT_SPIN}
"""The OpenMP variables a vqcodec process has unless its user sets them (``threads.spin_briefly``)."""

LOAD_CASES: dict[str, tuple[dict[str, str], int | None]] = {
    "default threads, OpenMP's long spins (before)": ({}, None),
    f"default threads, short spins ({SPIN_COUNT}={SHORT_SPIN}: the default)": (DEFAULT_WAITS, None),
    "default threads, passive waits (OMP_WAIT_POLICY=PASSIVE)": ({WAIT_POLICY: "PASSIVE"}, None),
    "1 thread (--threads 1)": (DEFAULT_WAITS, 1),
}
"""What ``threads_under_load`` compares: the OpenMP variables, and the thread count (None: torch's)."""


def child(
    operation: str,
    paths: list[Path],
    quality: int,
    model: str | None,
    device: str,
    batch: int,
    tile: int,
    threads: int | None,
) -> None:
    """Time ``operation`` on every path and print JSON: "encode" (PNG → .vqz, with the files' sizes),
    "decode" (.vqz → pixels) or "decode-batch" (``batch`` files at a time with ``decompress_many``:
    one time per batch); ``tile``: the tile side in pixels, 0 for whole maps; ``threads``: torch's CPU
    threads (None: its default)."""
    import vqcodec

    if threads is not None:
        torch.set_num_threads(threads)
    codec = vqcodec.load_model(model, device=device)
    warm = np.zeros((WARM_UP_SIDE, WARM_UP_SIDE, 3), np.uint8)
    codec.decompress(codec.compress(warm))
    seconds, sizes = [], []
    suffix = f".q{quality}.t{tile}.vqz"
    if operation == "encode":
        for path in paths:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            tick = time.perf_counter()
            data = codec.compress(rgb, quality=quality, tile=tile or None)
            seconds.append(time.perf_counter() - tick)
            sizes.append(len(data))
            path.with_suffix(suffix).write_bytes(data)
    else:
        datas = [path.with_suffix(suffix).read_bytes() for path in paths]
        per_call = batch if operation == "decode-batch" else 1
        for start in range(0, len(datas), per_call):
            tick = time.perf_counter()
            if operation == "decode-batch":
                codec.decompress_many(datas[start : start + per_call])
            else:
                codec.decompress(datas[start])
            seconds.append(time.perf_counter() - tick)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    print(json.dumps({"seconds": seconds, "bytes": sizes, "peak_mb": peak_mb, "gpu_peak_mb": gpu_mb}))


def run_child(
    operation: str,
    paths: list[Path],
    args: argparse.Namespace,
    tile: int | None = None,
    threads: int | None = None,
    waits: dict[str, str] = DEFAULT_WAITS,
) -> dict:
    """Run ``child`` in a fresh process, with ``args.tile`` unless ``tile`` is given, ``threads`` CPU
    threads (None: torch's default) and ``waits``, the OpenMP variables (none: OpenMP's defaults)."""
    command = [sys.executable, __file__, "--child", operation, "--quality", str(args.quality)]
    command += ["--batch", str(args.batch), "--tile", str(args.tile if tile is None else tile)]
    command += ["--device", args.device, *(["--model", args.model] if args.model else [])]
    command += [*(["--child-threads", str(threads)] if threads else []), *map(str, paths)]
    env = {key: value for key, value in os.environ.items() if key not in (WAIT_POLICY, SPIN_COUNT)}
    env.update(waits)
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def threads_under_load(paths: list[Path], args: argparse.Namespace) -> dict:
    """Median encode and decode seconds of each of ``LOAD_CASES``, idle and beside ``args.load`` busy
    processes (a core each, as other work on a shared machine would)."""
    cases: dict[str, dict[str, dict[str, float]]] = {name: {} for name in LOAD_CASES}
    for condition, busy in (("idle", 0), ("loaded", args.load)):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            for name, (waits, threads) in LOAD_CASES.items():
                times = {
                    f"{operation}_s": statistics.median(
                        run_child(operation, paths, args, threads=threads, waits=waits)["seconds"]
                    )
                    for operation in ("encode", "decode")
                }
                cases[name][condition] = times
                print(f"{condition}, {name}: {times}", flush=True)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    return {"images": len(paths), "load_processes": args.load, "cases": cases}


def threads_markdown(result: dict, machine: dict) -> str:
    lines = [
        "# Threads under a parallel load",
        "",
        f"Run {machine['date']} on {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']};"
        f" `python benchmarks/speed.py --only-load`: median seconds over {result['images']} Kodak images,"
        f" each case in a fresh process, on an idle machine and beside {result['load_processes']} processes"
        " that keep a core busy each.",
        "",
        "| threads and waits | encode, idle | decode, idle | encode, loaded | decode, loaded"
        " | loaded / idle (encode, decode) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, times in result["cases"].items():
        idle, loaded = times["idle"], times["loaded"]
        lines.append(
            f"| {name} | {idle['encode_s']:.2f} | {idle['decode_s']:.2f} | {loaded['encode_s']:.2f}"
            f" | {loaded['decode_s']:.2f} | {loaded['encode_s'] / idle['encode_s']:.1f}x,"
            f" {loaded['decode_s'] / idle['decode_s']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def write_large(source: Path, width: int, height: int, args: argparse.Namespace) -> None:
    """Encode and decode ``source`` resized to ``width`` x ``height``, each once in a fresh process."""
    from vqcodec.bench.run import machine_info

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{source.stem}_{width}x{height}.png"
        Image.open(source).convert("RGB").resize((width, height), Image.Resampling.LANCZOS).save(
            path, compress_level=1
        )
        encoded, decoded = run_child("encode", [path], args), run_child("decode", [path], args)
    result = {
        "image": f"{source.name} resized to {width}x{height} ({width * height / 1e6:.1f} Mpx)",
        "encode_s": encoded["seconds"][0],
        "decode_s": decoded["seconds"][0],
        "encode_peak_mb": encoded["peak_mb"],
        "decode_peak_mb": decoded["peak_mb"],
        "bytes": encoded["bytes"][0],
    }
    machine = machine_info()
    text = "\n".join(
        [
            "# A camera-sized image",
            "",
            f"Run {machine['date']} on {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']};"
            f" `python benchmarks/speed.py --only-large {width}x{height}`, quality {args.quality}, device"
            f" {args.device}: {result['image']}, {result['bytes']} bytes.",
            "",
            "| | seconds | peak resident memory |",
            "|---|---:|---:|",
            f"| encode | {result['encode_s']:.1f} | {result['encode_peak_mb'] / 1024:.2f} GB |",
            f"| decode | {result['decode_s']:.1f} | {result['decode_peak_mb'] / 1024:.2f} GB |",
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "large.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "large.md").write_text(text + "\n")
    print(text)


def write_threads(paths: list[Path], args: argparse.Namespace) -> None:
    from vqcodec.bench.run import machine_info

    result = threads_under_load(paths, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threads.json").write_text(json.dumps(result, indent=2) + "\n")
    text = threads_markdown(result, machine_info())
    (args.out / "threads.md").write_text(text)
    print(text)


def compressai_times(paths: list[Path]) -> dict[str, dict]:
    """Median encode and decode seconds of CompressAI's architectures (random weights); {} if absent."""
    try:
        import compressai
        from compressai.zoo import bmshj2018_factorized, mbt2018
    except ImportError:
        return {}
    times = {}
    for name, build in (("bmshj2018-factorized", bmshj2018_factorized), ("mbt2018", mbt2018)):
        net = build(quality=1, pretrained=False).eval()
        net.update(force=True)
        encode, decode = [], []
        for path in paths:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
            with torch.no_grad():
                tick = time.perf_counter()
                out = net.compress(x)
                encode.append(time.perf_counter() - tick)
                tick = time.perf_counter()
                net.decompress(out["strings"], out["shape"])
                decode.append(time.perf_counter() - tick)
        times[name] = {
            "encode_s": statistics.median(encode),
            "decode_s": statistics.median(decode),
            "version": compressai.__version__,
        }
    return times


def factorized_transforms_times(paths: list[Path]) -> dict[str, float]:
    """Median seconds of bmshj2018-factorized's analysis and synthesis transforms (N=128, M=192, as
    CompressAI's qualities 1-5, random weights), rebuilt in torch: a lower bound on that codec's encode
    and decode times (its entropy coder is left out), for a ratio on this machine without CompressAI."""
    from torch import nn

    class GDN(nn.Module):  # y = x / sqrt(beta + gamma x^2); inverse: x * sqrt(...)
        def __init__(self, channels: int, inverse: bool) -> None:
            super().__init__()
            self.inverse = inverse
            self.norm = nn.Conv2d(channels, channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            norm = torch.sqrt(self.norm(x * x).abs() + 1e-6)
            return x * norm if self.inverse else x / norm

    n, m = 128, 192

    def down(i: int, o: int) -> nn.Module:
        return nn.Conv2d(i, o, 5, stride=2, padding=2)

    def up(i: int, o: int) -> nn.Module:
        return nn.ConvTranspose2d(i, o, 5, stride=2, padding=2, output_padding=1)

    analysis = nn.Sequential(
        down(3, n), GDN(n, False), down(n, n), GDN(n, False), down(n, n), GDN(n, False), down(n, m)
    )
    synthesis = nn.Sequential(
        up(m, n), GDN(n, True), up(n, n), GDN(n, True), up(n, n), GDN(n, True), up(n, 3)
    )
    encode, decode = [], []
    with torch.inference_mode():
        for path in paths:
            rgb = np.array(Image.open(path).convert("RGB"))
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
            analysis(x[..., :64, :64])  # warm-up
            tick = time.perf_counter()
            y = analysis(x).round()
            encode.append(time.perf_counter() - tick)
            tick = time.perf_counter()
            synthesis(y)
            decode.append(time.perf_counter() - tick)
    return {"encode_s": statistics.median(encode), "decode_s": statistics.median(decode)}


def prior_multiply_adds(model: str | None, width: int, height: int) -> int:
    """Multiply-adds of the priors' float64 matrix products for one image of this size: every layer
    once per position (the conditioning stack and its projections at a quarter of them), the attention
    products counted without the heads' block-diagonal padding. The same on every machine."""
    import vqcodec

    codec = vqcodec.load_model(model, device="cpu")
    total = 0
    shapes = codec.model.code_shapes(*codec.padded_size(height, width))
    for prior, (h, w) in zip(codec.exact_priors, shapes, strict=True):
        full, quarter = h * w, -(-h // 2) * -(-w // 2)

        def work(layer, positions: int) -> int:
            fan_in, out = layer.weight.shape
            return positions * fan_in * out

        total += work(prior.input_conv, full) + work(prior.out_conv, full)
        for block in prior.blocks:
            total += work(block.conv1, full) + work(block.conv2, full)
            total += work(block.cond_proj, quarter) if block.cond_proj is not None else 0
        for attn in prior.attentions:
            total += sum(work(layer, full) for layer in (attn.query, attn.key, attn.value, attn.proj))
            total += 2 * full * prior.channels * len(prior.attention_offsets)
        for block in prior.out_blocks:
            total += work(block.conv1, full) + work(block.conv2, full)
        if prior.cond_conv is not None:
            total += work(prior.cond_conv, quarter)
        for block in prior.cond_stack:
            total += work(block.conv1, quarter) + work(block.conv2, quarter)
    return total


def float64_gemm_rate(device: str) -> float:
    """GFLOP/s of a large float64 matrix product here (the priors' products are float64)."""

    a = torch.randn(8192, 320, dtype=torch.float64, device=device)
    b = torch.randn(320, 128, dtype=torch.float64, device=device)
    for _ in range(3):
        a @ b
    repeats = 20
    if device != "cpu":
        torch.cuda.synchronize()
    tick = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device != "cpu":
        torch.cuda.synchronize()
    return repeats * 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - tick) / 1e9


def gpu_name() -> str:

    return torch.cuda.get_device_name()


def markdown(report: dict) -> str:
    machine = report["machine"]
    coding = f"tiles of {report['tile']} pixels" if report.get("tile") else "whole code maps"
    lines = [
        "# vqcodec speed and memory",
        "",
        f"Run {machine['date']} on {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}"
        f" ({machine['torch_threads']} threads), device {report['device']}; `python benchmarks/speed.py`,"
        f" model {report['model'] or 'default'}, quality {report['quality']},"
        f" {coding}.",
        "",
        "| image | encode (s, median) | decode (s, median) | encode peak RSS | decode peak RSS |"
        + (" GPU peak (enc / dec) |" if report["device"] != "cpu" else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" if report["device"] != "cpu" else ""),
    ]
    for row in report["rows"]:
        line = (
            f"| {row['image']} | {row['encode_s']:.2f} | {row['decode_s']:.2f}"
            f" | {row['encode_peak_mb'] / 1024:.2f} GB | {row['decode_peak_mb'] / 1024:.2f} GB |"
        )
        if report["device"] != "cpu":
            line += f" {row['encode_gpu_mb'] / 1024:.2f} / {row['decode_gpu_mb'] / 1024:.2f} GB |"
        lines.append(line)
    lines.append("")
    if report.get("tile"):
        lines += [
            f"The files above are cut into tiles of {report['tile']} pixels, each coded as an independent"
            " image (`bitstream_spec/vqz.md` §5.2): the context the priors see ends at a tile's border, and"
            " the decoder runs the tiles' wavefronts side by side. The same images coded whole (`--tile 0`):",
            "",
            "| image | bytes, tiles | bytes, whole | tiles' bits cost | decode (s), whole"
            " | decode time, tiles / whole |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in report["rows"]:
            tiled, whole = sum(row["bytes"]), sum(row["whole_bytes"])
            lines.append(
                f"| {row['image']} | {tiled} | {whole} | {100 * (tiled / whole - 1):+.2f} %"
                f" | {row['whole_decode_s']:.2f} | {row['decode_s'] / row['whole_decode_s']:.2f} |"
            )
        lines.append("")
    if report["compressai"]:
        kodak = report["rows"][0]
        version = next(iter(report["compressai"].values())).get("version")  # absent from older runs
        lines += [
            f"CompressAI{f' {version}' if version else ''} on the same Kodak images (random weights), and"
            " vqcodec's time as a multiple of its:",
            "",
            "| architecture | encode (s) | decode (s) | vqcodec encode ratio | vqcodec decode ratio |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, t in report["compressai"].items():
            lines.append(
                f"| {name} | {t['encode_s']:.2f} | {t['decode_s']:.2f}"
                f" | {kodak['encode_s'] / t['encode_s']:.1f}x | {kodak['decode_s'] / t['decode_s']:.1f}x |"
            )
    else:
        lines.append(
            "CompressAI is not installed: no in-run comparison with bmshj2018-factorized and mbt2018."
        )
    if report.get("factorized_transforms"):
        t, kodak = report["factorized_transforms"], report["rows"][0]
        lines += [
            "",
            ("Also" if report["compressai"] else "Instead,")
            + " bmshj2018-factorized's transforms rebuilt in torch (N=128, M=192, GDN, random"
            " weights), without its entropy coder, so a lower bound on its times, on the same Kodak images:"
            f" analysis (encode) {t['encode_s']:.2f} s, synthesis (decode) {t['decode_s']:.2f} s;"
            f" vqcodec takes {kodak['encode_s'] / t['encode_s']:.1f}x and"
            f" {kodak['decode_s'] / t['decode_s']:.1f}x those.",
        ]
    batch, kodak = report["batch_decode"], report["rows"][0]
    gpu = f", {batch['gpu_peak_mb'] / 1024:.2f} GB on the GPU" if batch["gpu_peak_mb"] is not None else ""
    lines += [
        "",
        f"Batch decoding (`vqcodec.decompress_many`, {batch['files_per_batch']} Kodak files of one size at a"
        f" time): {batch['seconds_per_image']:.2f} s per image, {1 / batch['seconds_per_image']:.2f} images/s"
        f" ({kodak['decode_s'] / batch['seconds_per_image']:.1f}x the throughput of one at a time); peak"
        f" {batch['peak_mb'] / 1024:.2f} GB{gpu}.",
    ]
    floor = report["compute_floor"]
    least = floor["kodak_floor_s"]
    least = f"{least:.2f} s" if least >= 0.1 else f"{least * 1000:.1f} ms"
    lines += [
        "",
        f"The priors' float64 matrix products take {floor['kodak_gmac']:.1f} G multiply-adds per Kodak image"
        f" (768x512); this machine multiplies large float64 matrices at {floor['gemm_gflops']:.0f} GFLOP/s,"
        f" so those products alone need at least {least} of every Kodak decode (and"
        f" encode): the floor of this model at exact float64 inference here, before any other work.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kodak"), help="the Kodak images")
    parser.add_argument("--limit", type=int, default=None, help="only the first N Kodak images")
    parser.add_argument("--quality", type=int, default=4, help="vqcodec quality (default 4)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed"), help="results folder")
    parser.add_argument("--no-4k", dest="uhd", action="store_false", help="skip the 3840x2160 image")
    parser.add_argument("--model", default=None, help="bundled model name or model file (default: default)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=8, help="files per batch for batch decoding (default 8)")
    parser.add_argument(
        "--tile",
        type=int,
        default=DEFAULT_TILE,
        help=f"tile side in pixels, 0: whole maps (default {DEFAULT_TILE})",
    )
    parser.add_argument(
        "--load", type=int, default=3, help="busy processes for the threads' test (default 3)"
    )
    parser.add_argument("--only-load", action="store_true", help="only the threads under a parallel load")
    parser.add_argument("--only-large", metavar="WxH", default=None, help="only kodim05 resized to WxH")
    parser.add_argument("--child", choices=("encode", "decode", "decode-batch"), help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(
            args.child,
            args.paths,
            args.quality,
            args.model,
            args.device,
            args.batch,
            args.tile,
            args.child_threads,
        )
        return

    from vqcodec.bench.run import machine_info

    kodak = sorted(args.data.glob("*.png"))[: args.limit or (4 if args.only_load else None)]
    if not kodak:
        raise SystemExit(f"no PNG images in {args.data}")
    if args.only_load:
        write_threads(kodak, args)
        return
    if args.only_large:
        write_large(args.data / "kodim05.png", *map(int, args.only_large.lower().split("x")), args)
        return
    with tempfile.TemporaryDirectory() as scratch:
        copies = []
        for path in kodak:
            copies.append(Path(scratch) / path.name)
            copies[-1].write_bytes(path.read_bytes())
        sets = [(f"Kodak ({len(kodak)} images, 768x512)", copies)]
        if args.uhd:
            uhd = Path(scratch) / "kodim05_3840x2160.png"
            Image.open(args.data / "kodim05.png").convert("RGB").resize(UHD, Image.Resampling.LANCZOS).save(
                uhd
            )
            sets.append(("3840x2160 (kodim05 resized)", [uhd]))
        rows = []
        for name, paths in sets:
            encoded = run_child("encode", paths, args)
            decoded = run_child("decode", paths, args)
            whole = {}
            if args.tile:
                whole_encoded, whole_decoded = (
                    run_child("encode", paths, args, 0),
                    run_child("decode", paths, args, 0),
                )
                whole = {
                    "whole_bytes": whole_encoded["bytes"],
                    "whole_encode_s": statistics.median(whole_encoded["seconds"]),
                    "whole_decode_s": statistics.median(whole_decoded["seconds"]),
                }
            rows.append(
                {
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
            )
            print(
                f"{name}: encode {rows[-1]['encode_s']:.2f} s, decode {rows[-1]['decode_s']:.2f} s",
                flush=True,
            )
        # Batches of one size (landscape, portrait): decode_many decodes each batch in one walk.
        by_size = sorted(copies, key=lambda path: Image.open(path).size)
        batched = run_child("decode-batch", by_size, args)
        batch = {
            "files_per_batch": args.batch,
            "seconds_per_image": sum(batched["seconds"]) / len(by_size),
            "peak_mb": batched["peak_mb"],
            "gpu_peak_mb": batched["gpu_peak_mb"],
        }
        print(f"batch decoding: {batch['seconds_per_image']:.2f} s per image", flush=True)
        report = {
            "quality": args.quality,
            "tile": args.tile,
            "model": args.model,
            "device": args.device if args.device == "cpu" else f"{args.device} ({gpu_name()})",
            "machine": machine_info(),
            "rows": rows,
            "batch_decode": batch,
            "compressai": compressai_times(copies) if args.device == "cpu" else {},
            "factorized_transforms": factorized_transforms_times(copies) if args.device == "cpu" else {},
        }
        macs, rate = prior_multiply_adds(args.model, 768, 512), float64_gemm_rate(args.device)
        report["compute_floor"] = {
            "kodak_gmac": macs / 1e9,
            "gemm_gflops": rate,
            "kodak_floor_s": 2 * macs / 1e9 / rate,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(report))
    print(markdown(report))
    if args.device == "cpu":
        write_threads(kodak[:4], args)


if __name__ == "__main__":
    main()
