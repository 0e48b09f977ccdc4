"""The rate-distortion code choice: exact integer costs, a choice that trades distance for bits, and
files that decode to the codes chosen."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqcodec import rdo
from vqcodec.cli import main
from vqcodec.codec import Codec
from vqcodec.coding.entropy import PRECISION
from vqcodec.models.config import tiny_config
from vqcodec.models.model import CodecModel
from vqcodec.zoo.modelfile import save_model


def test_bit_costs_are_minus_log2_of_the_probability() -> None:
    freqs = np.array([1, 2, 3, 1000, 2**23 - 1, 2**23, 2**24 - 5, 2**24])
    exact = [-math.log2(f / 2**PRECISION) * 2**rdo.RATE_BITS for f in freqs.tolist()]
    assert np.abs(rdo.bit_costs(freqs) - np.array(exact)).max() <= 2  # 2**-9 bits
    assert rdo.bit_costs(np.array([2**PRECISION]))[0] == 0


def test_the_log2_table_has_no_near_ties() -> None:
    """Every platform's log2 rounds to the same table when no entry lies near half an integer."""
    scaled = [2**rdo.RATE_BITS * math.log2(1 + i / 2**rdo.RATE_BITS) for i in range(2**rdo.RATE_BITS)]
    assert min(abs(v - math.floor(v) - 0.5) for v in scaled) > 1e-5


def test_the_choice_trades_distance_for_bits() -> None:
    candidates = np.array([[5, 7], [5, 7]])
    distances = np.array([[0, 100], [0, 10**6]])
    freqs = np.full((2, 8), 2**PRECISION // 64)
    freqs[:, 7] = 2**PRECISION - 7 * (2**PRECISION // 64)  # code 7 is likely, code 5 costs 6 bits
    assert rdo.choose(candidates, distances, freqs, 0).tolist() == [5, 5]  # no weight: the nearest
    assert rdo.choose(candidates, distances, freqs, 1).tolist() == [7, 5]  # 6 bits outweigh 100 units


def test_each_effort_chooses_its_levels() -> None:
    assert [rdo.levels(effort, 2) for effort in rdo.EFFORTS] == [[], [1], [0, 1]]
    with pytest.raises(ValueError, match="effort"):
        rdo.levels(max(rdo.EFFORTS) + 1, 2)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose codebooks a training pass seeded."""
    torch.manual_seed(3)
    model = CodecModel(tiny_config())
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(96.0), indexing="ij")
    images = torch.stack([0.5 + 0.4 * torch.sin(x / (5 + i) + y / (3 + i)) for i in range(6)]).view(
        2, 3, 64, 96
    )
    model.vqvae.train()
    with torch.no_grad():
        model.vqvae(images - 0.5)
    path = tmp_path_factory.mktemp("rdo") / "tiny.safetensors"
    save_model(model.eval(), path)
    return path


@pytest.fixture(scope="module")
def codec(model_file: Path) -> Codec:
    return Codec.open(model_file)


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:72, 0:104] / 9.0
    rgb = 127 + 90 * np.sin(x[..., None] * [1.0, 1.4, 0.6] + y[..., None]) + rng.normal(0, 20, (72, 104, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("effort", [1, 2])
def test_chosen_codes_decode_exactly_and_cost_fewer_bits(codec: Codec, effort: int) -> None:
    source = codec.source(_image(effort))
    nearest_data, nearest = codec.encode(source, tile=64, effort=0)
    data, codes = codec.encode(source, tile=64, effort=effort)
    decoded = codec.decode_codes(data)
    assert all(np.array_equal(a, b) for a, b in zip(decoded.codes, codes, strict=True))
    assert np.array_equal(codes[0], nearest[0]) == (effort == 1)  # effort 2 chooses the top codes too
    assert not np.array_equal(codes[1], nearest[1])
    assert sum(decoded.level_bits) < sum(codec.decode_codes(nearest_data).level_bits)


def test_effort_zero_takes_the_nearest_codewords(codec: Codec) -> None:
    image = _image(5)
    _, codes = codec.encode(codec.source(image), effort=0)
    assert all(np.array_equal(a, b) for a, b in zip(codes, codec.image_codes(image), strict=True))


def test_the_cli_takes_an_effort(tmp_path: Path, model_file: Path) -> None:
    Image.fromarray(_image(6)).save(tmp_path / "a.png")
    runner = CliRunner()
    for effort in ("0", "2"):
        out = tmp_path / f"a{effort}.vqz"
        args = ["compress", "--effort", effort, "--model", str(model_file), str(tmp_path / "a.png"), str(out)]
        assert runner.invoke(main, args).exit_code == 0 and out.stat().st_size > 0
    bad = runner.invoke(main, ["compress", "--effort", "9", str(tmp_path / "a.png"), str(tmp_path / "b.vqz")])
    assert bad.exit_code == 2 and not (tmp_path / "b.vqz").exists()


def test_the_api_and_pillow_take_an_effort(tmp_path: Path, model_file: Path) -> None:
    import vqcodec

    image = _image(7)
    data = vqcodec.compress(image, model=str(model_file), effort=2)
    assert (
        data
        == Codec.open(model_file).compress(image, effort=2)
        != vqcodec.compress(image, model=str(model_file))
    )
    Image.fromarray(image).save(tmp_path / "a.vqz", model=str(model_file), effort=2)
    assert (tmp_path / "a.vqz").read_bytes() == data
