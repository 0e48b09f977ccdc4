"""The benchmarks: MS-SSIM and PSNR, BD-rate on synthetic curves, the comparisons, the report writer, and
small runs of every ``vqcodec bench`` subcommand."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vqcodec import metrics
from vqcodec.bench.codecs import CODECS
from vqcodec.bench.rd import Curve, Point, command_line, compare
from vqcodec.bench.report import number, table
from vqcodec.cli import main


def pattern(height: int = 192, width: int = 208) -> np.ndarray:
    """Deterministic uint8 RGB content with detail at several scales."""
    y, x = np.mgrid[0:height, 0:width]
    planes = [
        127 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0),
        127 + 90 * np.sin((x + y) / 13.0),
        (x * y) % 256,
    ]
    return np.stack(planes, axis=2).round().astype(np.uint8)


def test_ms_ssim_matches_a_reference_value() -> None:
    a = pattern()
    y, x = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    b = np.clip(a.astype(int) + ((x * 7 + y * 13) % 31 - 15)[..., None], 0, 255).astype(np.uint8)
    # pytorch-msssim 1.0.0 (CompressAI's MS-SSIM), float64 inputs, data_range=255
    assert metrics.ms_ssim(a, b) == pytest.approx(0.98871824, abs=1e-6)


@pytest.mark.parametrize("shape", [(192, 208), (48, 64)])
def test_ms_ssim_is_one_for_identical_images_and_falls_with_noise(shape: tuple[int, int]) -> None:
    a = pattern(*shape)
    assert metrics.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=a.shape)
    values = [
        metrics.ms_ssim(a, np.clip(a + s * noise, 0, 255).round().astype(np.uint8))
        for s in (2, 5, 10, 20, 40)
    ]
    assert all(hi > lo for hi, lo in zip(values, values[1:], strict=False))
    assert 0.0 < values[-1] < values[0] < 1.0


def test_ms_ssim_rejects_images_smaller_than_the_window() -> None:
    with pytest.raises(ValueError, match="smaller than"):
        metrics.ms_ssim(pattern(8, 64), pattern(8, 64))


def test_psnr() -> None:
    a = pattern(48, 64)
    assert metrics.psnr(a, a) == math.inf
    b = a.copy()
    b[a < 255] += 1
    b[a == 255] -= 1
    assert metrics.psnr(a, b) == pytest.approx(20 * math.log10(255))
    assert metrics.ms_ssim_db(0.99) == pytest.approx(20.0)


def rd_curve(rates: np.ndarray, extra_bits: float = 0.0) -> tuple[list[float], list[float]]:
    """A smooth concave R-D curve, PSNR = 30 + 6 x - 0.4 x^2 (x = log2 rate), at (1 + extra_bits) x rate."""
    log_rate = np.log2(rates)
    psnr = 30 + 6 * log_rate - 0.4 * log_rate**2
    return list(rates * (1.0 + extra_bits)), list(psnr)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_rate_of_identical_curves_is_zero(method: str) -> None:
    rate, psnr = rd_curve(np.geomspace(0.1, 1.5, 8))
    assert metrics.bd_rate(rate, psnr, rate, psnr, method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_rate_of_a_curve_needing_ten_percent_more_bits(method: str) -> None:
    anchor = rd_curve(np.geomspace(0.1, 1.5, 8))
    same_points = rd_curve(np.geomspace(0.1, 1.5, 8), extra_bits=0.10)
    assert metrics.bd_rate(*anchor, *same_points, method) == pytest.approx(10.0, abs=1e-9)
    other_points = rd_curve(np.geomspace(0.12, 1.3, 5), extra_bits=0.10)  # sampled elsewhere on the curve
    assert metrics.bd_rate(*anchor, *other_points, method) == pytest.approx(10.0, abs=0.1)
    assert metrics.bd_rate(*other_points, *anchor, method) == pytest.approx(100 / 1.1 - 100, abs=0.1)


def test_bd_rate_needs_overlapping_curves() -> None:
    with pytest.raises(ValueError, match="do not overlap"):
        metrics.bd_rate([0.1, 0.2], [20.0, 22.0], [0.5, 1.0], [30.0, 33.0])
    with pytest.raises(ValueError, match="2 or more points"):
        metrics.bd_rate([0.1, 0.2], [20.0, 22.0], [0.5], [21.0])


def test_values_at_a_rate_and_rates_at_a_value() -> None:
    rate, psnr = [0.2, 0.4, 0.8], [26.0, 29.0, 32.0]
    assert metrics.value_at_rate(rate, psnr, 0.3) == pytest.approx(27.5)
    assert metrics.value_at_rate(rate, psnr, 1.0) is None
    assert metrics.rate_at_value(rate, psnr, 27.5) == pytest.approx(math.sqrt(0.2 * 0.4))
    assert metrics.rate_at_value(rate, psnr, 40.0) is None


def curve(key: str, rates: np.ndarray, extra_bits: float = 0.0) -> Curve:
    rate, psnr = rd_curve(rates, extra_bits)
    ms_ssim = [1 - 10 ** (-(p - 12) / 10) for p in psnr]  # any increasing function of PSNR
    points = [
        Point(str(i), r, p, s, 0.0, 0.0) for i, (r, p, s) in enumerate(zip(rate, psnr, ms_ssim, strict=True))
    ]
    return Curve(key, key.upper(), key, "quality", points)


def test_compare_at_every_operating_point_and_by_bd_rate() -> None:
    rates = np.geomspace(0.1, 1.5, 8)
    anchor = curve("jpeg", rates)
    several = compare(curve("vqcodec", rates[1:-1], extra_bits=-0.2), [anchor])
    assert several["bd_rate"][0]["bd_rate_psnr"] == pytest.approx(-20.0, abs=0.1)
    assert several["bd_rate"][0]["bd_rate_ms_ssim"] == pytest.approx(-20.0, abs=0.1)
    assert [point["bpp"] for point in several["at_rate"]] == pytest.approx(0.8 * rates[1:-1])
    for point in several["at_rate"]:
        row = point["rows"][0]
        assert row["delta_psnr"] > 0  # fewer bits for the same quality: better at the same rate
        assert row["rate_percent_psnr"] == pytest.approx(-20.0, abs=0.5)

    single = compare(curve("vqcodec", np.array([0.5]), extra_bits=-0.2), [anchor])
    assert single["bd_rate"] is None  # a BD-rate needs a curve
    (point,) = single["at_rate"]
    assert point["rows"][0]["bpp_at_equal_psnr"] == pytest.approx(0.5, rel=0.01)


# --- a whole run ------------------------------------------------------------------------------------------


def write_images(folder: Path, n: int, seed: int, height: int = 48, width: int = 64) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        shift = np.random.default_rng(seed + i).integers(0, 50)
        Image.fromarray(np.roll(pattern(height, width), shift, axis=1)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def tiny_model(untrained_model_file: Path) -> Path:
    return untrained_model_file


def test_report_tables_and_numbers() -> None:
    rows = [["a", number(1.23456, 2)], ["b", number(None, 2)]]
    assert table(["", "value"], "lr", rows) == ["| | value |", "|---|---:|", "| a | 1.23 |", "| b |  |"]
    assert number(4.2, 1, " %", sign=True) == "+4.2 %"
    assert number(math.inf, 1) == "inf"


def test_bench_without_a_subcommand_lists_them() -> None:
    result = CliRunner().invoke(main, ["bench"])
    assert result.exit_code == 2  # as vqcodec without a command: click's help, and its usage status
    assert all(name in result.output for name in ("rd", "speed", "bpd"))


def test_bench_rd_writes_the_results(tmp_path: Path, tiny_model: Path) -> None:
    data = write_images(tmp_path / "images", 3, seed=0)
    out = tmp_path / "out"
    args = ["bench", "rd", "--data", str(data), "--out", str(out), "--limit", "2", "--model", str(tiny_model)]
    args += [*("-q", "1", "-q", "2.5", "-q", "4"), "--codecs", "vqcodec,jpeg,webp"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output

    for key, n_settings in (("vqcodec", 3), ("jpeg", 10), ("webp", 10)):
        report = json.loads((out / f"{key}.json").read_text())
        assert set(report) == {"name", "description", "results", "bench"}
        results = report["results"]
        assert set(results) == {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}
        assert all(len(values) == n_settings for values in results.values())
        assert results["bpp"] == sorted(results["bpp"])
        assert report["bench"]["images"] == ["img0.png", "img1.png"]
    vq = json.loads((out / "vqcodec.json").read_text())["bench"]
    assert sorted(vq["settings"]) == ["tiny q1", "tiny q2.5", "tiny q4"]
    for point in vq["points"]:
        assert set(point["bits_per_level"]) == {"top", "bottom"}
        assert point["bpd_file"] > point["bpd_ideal"] > 0
        assert 0 < point["prior_bits_of_raw_percent"] < 200  # a random prior may cost more than raw codes
    comparison = vq["comparison"]
    assert sorted(p["setting"] for p in comparison["at_rate"]) == sorted(vq["settings"])
    assert [row["codec"] for row in comparison["bd_rate"]] == ["jpeg", "webp"]

    markdown = (out / "results.md").read_text()
    headings = ("## vqcodec", "at each operating point's rate", "Bjøntegaard", "### JPEG", "### WebP")
    for heading in (*headings, "cores"):
        assert heading in markdown
    assert markdown in result.output
    if importlib.util.find_spec("matplotlib") is None:  # matplotlib comes with the bench extra, not dev
        assert "rd.png not written: matplotlib is not installed" in markdown
    else:
        with Image.open(out / "rd.png") as figure:
            assert figure.format == "PNG" and figure.width > 500


def test_bench_rd_runs_vqcodec_at_an_effort(tmp_path: Path, tiny_model: Path) -> None:
    data = write_images(tmp_path / "images", 1, seed=0)
    out = tmp_path / "out"
    args = ["bench", "rd", "--data", str(data), "--out", str(out), "--model", str(tiny_model), "-q", "4"]
    result = CliRunner().invoke(main, [*args, "--codecs", "vqcodec", "--effort", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "vqcodec.json").read_text())["bench"]["settings"] == ["tiny e2 q4"]


def test_bench_rd_gives_each_model_its_curve(tmp_path: Path, tiny_model: Path) -> None:
    """Two models' points made one "vqcodec" curve, one BD-rate and one line in the plot."""
    data = write_images(tmp_path / "images", 1, seed=0)
    other = tmp_path / "other.safetensors"
    other.write_bytes(tiny_model.read_bytes())
    out = tmp_path / "out"
    args = ["bench", "rd", "--data", str(data), "--out", str(out), "--codecs", "vqcodec,jpeg"]
    args += ["--model", str(tiny_model), "--model", str(other), "-q", "2", "-q", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.glob("*.json")) == [
        "jpeg.json",
        "vqcodec-other.json",
        "vqcodec-tiny.json",
    ]
    for label in ("tiny", "other"):
        bench = json.loads((out / f"vqcodec-{label}.json").read_text())["bench"]
        assert bench["settings"] == [f"{label} q2", f"{label} q4"]
        assert [row["codec"] for row in bench["comparison"]["bd_rate"]] == ["jpeg"]
    markdown = (out / "results.md").read_text()
    assert "## vqcodec (tiny) against each codec" in markdown and "## vqcodec (other)" in markdown


def test_bench_rd_names_the_curves_an_earlier_run_left(tmp_path: Path) -> None:
    data = write_images(tmp_path / "images", 1, seed=0)
    out = tmp_path / "out"
    for codecs in ("jpeg,webp", "jpeg"):
        result = CliRunner().invoke(
            main, ["bench", "rd", "--data", str(data), "--out", str(out), "--codecs", codecs]
        )
        assert result.exit_code == 0, result.output
    assert (
        "Curves of an earlier run in this folder, not this run's: webp.json."
        in (out / "results.md").read_text()
    )


def test_bench_refuses_an_out_folder_before_measuring(tmp_path: Path) -> None:
    data = write_images(tmp_path / "images", 1, seed=0)
    (tmp_path / "file").write_text("")
    for out, message in ((data / "results", "in the image folder"), (tmp_path / "file" / "x", "cannot make")):
        result = CliRunner().invoke(
            main, ["bench", "rd", "--data", str(data), "--out", str(out), "--codecs", "jpeg"]
        )
        assert result.exit_code == 2 and message in result.output, result.output
    assert sorted(path.name for path in data.iterdir()) == ["img0.png"]
    result = CliRunner().invoke(
        main, ["bench", "rd", "--data", str(data), "--out", str(tmp_path / "o"), "--codecs", "compressai"]
    )
    assert result.exit_code in (0, 1)  # CompressAI runs where it is installed; else nothing can run
    if result.exit_code:
        assert "none of the codecs asked for can run here" in result.output


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--quality", "9"], "0<=x<=4"),
        (["--device", "gpu"], "invalid device"),
        (["--tile", "7"], "tile side"),
    ],
)
def test_bench_speed_refuses_bad_options_before_any_child(
    tmp_path: Path, option: list[str], message: str
) -> None:
    """They were internal errors (exit 5) raised by the first child process."""
    data = write_images(tmp_path / "kodak", 1, seed=0)
    result = CliRunner().invoke(
        main, ["bench", "speed", "--data", str(data), "--out", str(tmp_path / "o"), *option]
    )
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_results_json_is_strict(tmp_path: Path) -> None:
    """A lossless point's infinite PSNR was written as Infinity, which JSON has not."""
    from vqcodec.bench.report import save

    save(tmp_path, {"a.json": {"psnr": [math.inf, 30.0], "x": {"y": math.nan}}})
    assert json.loads((tmp_path / "a.json").read_text()) == {"psnr": [None, 30.0], "x": {"y": None}}


def test_a_one_point_baseline_has_no_rate_at_a_quality() -> None:
    """compare() raised on it after the whole run, and nothing was written."""
    assert metrics.rate_at_value([0.5], [30.0], 30.0) is None


def test_bench_rd_rejects_unknown_codecs(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["bench", "rd", "--data", str(tmp_path), "--out", str(tmp_path), "--codecs", "gif"]
    )
    assert result.exit_code == 2
    assert "choose from" in result.output


def test_bench_bpd_measures_every_prior_on_train_and_val(tmp_path: Path, tiny_model: Path) -> None:
    train = write_images(tmp_path / "train", 2, seed=10)
    val = write_images(tmp_path / "val", 2, seed=20)
    out = tmp_path / "out"
    args = ["bench", "bpd", "--out", str(out), "--model", str(tiny_model), "--images", "2"]
    result = CliRunner().invoke(main, [*args, "--train-data", str(train), "--val-data", str(val)])
    assert result.exit_code == 0, result.output

    report = json.loads((out / "bpd.json").read_text())
    assert [(row["model"], row["level"]) for row in report["rows"]] == [("tiny", "top"), ("tiny", "bottom")]
    assert all(row["train"] > 0 and row["val"] > 0 for row in report["rows"])
    markdown = (out / "results.md").read_text()
    assert "| tiny | top |" in markdown and markdown in result.output


@pytest.mark.slow
def test_bench_speed_times_the_codec_in_fresh_processes(tmp_path: Path, tiny_model: Path) -> None:
    data = write_images(tmp_path / "kodak", 2, seed=0, height=64, width=128)
    out = tmp_path / "out"
    args = ["bench", "speed", "--data", str(data), "--out", str(out), "--model", str(tiny_model)]
    result = CliRunner().invoke(main, [*args, "--no-4k", "--load", "0", "--tile", "64", "--batch", "2"])
    assert result.exit_code == 0, result.output

    report = json.loads((out / "speed.json").read_text())
    (row,) = report["rows"]
    assert row["image"].startswith("Kodak (2 images") and len(row["decode_seconds"]) == 2
    assert sum(row["bytes"]) > 0 and sum(row["whole_bytes"]) > 0  # in 64-pixel tiles, and whole
    assert report["batch_decode"]["files_per_batch"] == 2 and report["compute_floor"]["kodak_gmac"] > 0
    # alternated in one process, in a plain one and with the command's allocator: each image twice
    plain, tuned = report["versus"], report["versus_allocator"]
    for versus in (plain, tuned):
        assert versus["images"] == 2
        assert len(versus["encode"]["ratios"]) == len(versus["decode"]["ratios"]) == 4
    assert not plain["allocator"] and tuned["allocator"]
    markdown = (out / "results.md").read_text()
    assert "`vqcodec bench speed`" in markdown and "tiles of 64 pixels" in markdown
    assert "bmshj2018-factorized" in markdown and "per-image ratios" in markdown
    assert "as the `vqcodec` command sets it" in markdown
    assert not (out / "threads.md").exists()  # --load 0: no threads' test


def test_rd_reports_name_the_command_that_gives_them() -> None:
    assert command_line(None, (), (), CODECS, 0) == "vqcodec bench rd"
    assert (
        command_line(2, ("a.safetensors",), (1.0, 3.5), ["vqcodec", "jpeg"], 2)
        == "vqcodec bench rd --limit 2 --model a.safetensors --quality 1 --quality 3.5 --effort 2"
        " --codecs vqcodec,jpeg"
    )
