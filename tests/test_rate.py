"""The continuous quality scale and the targets: sizes grow with the quality, a target is never broken."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from synthetic_images import smooth

from vqcodec.cli import main
from vqcodec.codec import Codec
from vqcodec.coding.container import VQZFile
from vqcodec.metrics import psnr
from vqcodec.quality import SWEEP_QUALITIES, coded_size, scale
from vqcodec.rate import REFINE_ROUNDS, Target, compress_to_target

IMAGE = smooth(96, 64, seed=5)
KODAK = Path(__file__).resolve().parents[2] / "shared/data/kodak"


def test_the_scale_passes_through_the_whole_qualities_and_is_monotone():
    assert [scale(q) for q in (0, 1, 2, 3, 4)] == pytest.approx([4.5, 2.0, 1.5, 1.25, 1.0])
    scales = [scale(q / 20) for q in range(81)]
    assert all(a > b for a, b in zip(scales, scales[1:], strict=False))
    assert coded_size(768, 512, 3.5) == (687, 458) and coded_size(768, 512, 0) == (171, 114)


def test_a_fractional_quality_codes_an_image_between(codec: Codec):
    fractional = VQZFile.from_bytes(codec.compress(IMAGE, quality=2.5))
    assert (fractional.coded_width, fractional.coded_height) == coded_size(96, 64, 2.5) == (70, 47)
    assert codec.decompress(fractional.to_bytes()).size == (96, 64)


@pytest.mark.slow
@pytest.mark.skipif(not KODAK.is_dir(), reason="Kodak images not available (../shared/data/kodak)")
@pytest.mark.parametrize("name", ["kodim01", "kodim15", "kodim23"])
def test_bits_grow_with_the_quality_on_photographs(name: str):
    """The bundled model on a 192 x 128 crop of a photograph, over the benchmark's sweep."""
    import vqcodec

    crop = np.asarray(Image.open(KODAK / f"{name}.png").convert("RGB"))[100:228, 200:392]
    sizes = [len(vqcodec.compress(crop, quality=quality)) for quality in SWEEP_QUALITIES]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 5, sizes


def test_a_target_size_is_never_exceeded(codec: Codec):
    smallest, largest = len(codec.compress(IMAGE, quality=0)), len(codec.compress(IMAGE, quality=4))
    steps = []
    for limit in (smallest, (smallest + largest) // 2, largest - 1, largest + 100):
        reached = compress_to_target(
            codec, IMAGE, Target(max_bytes=limit), progress=lambda *s: steps.append(s)
        )
        file = VQZFile.from_bytes(reached.data)
        assert len(reached.data) <= limit and (file.coded_width, file.coded_height) == reached.coded_size
        assert len(reached.data) >= len(codec.compress(IMAGE, quality=reached.quality))  # refined, not worse
    assert reached.quality == 4  # the whole scale fits: the best quality
    assert steps and all(total == 10 + 3 * REFINE_ROUNDS for _, total in steps)
    with pytest.raises(ValueError, match="cannot reach"):
        compress_to_target(codec, IMAGE, Target(max_bytes=smallest - 1))
    bpp = compress_to_target(codec, IMAGE, Target(max_bpp=8 * (smallest + largest) / 2 / (96 * 64)))
    assert len(bpp.data) <= (smallest + largest) / 2


def test_a_target_psnr_is_reached_with_the_smallest_file(codec: Codec):
    best = compress_to_target(codec, IMAGE, Target(min_psnr=1.0))  # every quality reaches 1 dB
    assert best.quality == 0 and best.psnr is not None and best.psnr >= 1.0
    top = compress_to_target(codec, IMAGE, Target(max_bytes=10**9))
    top_psnr = psnr(IMAGE, np.asarray(codec.decompress(top.data).convert("RGB")))
    middle = compress_to_target(codec, IMAGE, Target(min_psnr=top_psnr - 0.5))
    assert middle.psnr is not None and middle.psnr >= top_psnr - 0.5
    with pytest.raises(ValueError, match="cannot reach"):
        compress_to_target(codec, IMAGE, Target(min_psnr=top_psnr + 10))


def test_one_target_at_a_time():
    for given in (
        {},
        {"max_bytes": 10, "min_psnr": 30.0},
        {"max_bytes": 0},
        {"max_bytes": True},
        {"max_bytes": 10**400},
    ):
        with pytest.raises(ValueError):
            Target(**given)  # type: ignore[arg-type]


def test_command_line_targets(model_file: Path, tmp_path: Path):
    png = tmp_path / "in.png"
    Image.fromarray(IMAGE).save(png)

    def compress(*options: str) -> int:
        out = tmp_path / "out.vqz"
        result = CliRunner().invoke(
            main, ["compress", "-m", str(model_file), "-f", "-v", *options, str(png), str(out)]
        )
        assert result.exit_code == 0, result.output
        return out.stat().st_size

    limit = (compress("-q", "1") + compress("-q", "3.5")) // 2
    assert compress("--target-size", str(limit)) <= limit
    result = CliRunner().invoke(
        main, ["compress", "-m", str(model_file), "--target-size", "9", "--target-psnr", "20", str(png), "-"]
    )
    assert result.exit_code == 2 and "one of --target-size" in result.stderr
    result = CliRunner().invoke(
        main, ["compress", "-m", str(model_file), "-q", "2", "--target-bpp", "1", str(png), "-"]
    )
    assert result.exit_code == 2 and "not both" in result.stderr
