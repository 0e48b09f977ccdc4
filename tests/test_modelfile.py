"""Model files: exact round trips, stable SHA-256, and clean rejection of anything malformed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from synthetic_images import make_images

from vqcodec import zoo
from vqcodec.models.config import PRESETS, ModelConfig, tiny_config
from vqcodec.models.model import CodecModel, build_prior, sample_images
from vqcodec.models.vqvae import VQVAE
from vqcodec.train.checkpoint import checkpoint_path, read_model_state
from vqcodec.train.export import export
from vqcodec.train.stage1 import train_vqvae
from vqcodec.train.stage2 import train_prior
from vqcodec.zoo import modelfile
from vqcodec.zoo.modelfile import ModelFileError, config_from_dict, read_model, save_model


def tiny_model(seed: int = 0) -> CodecModel:
    torch.manual_seed(seed)
    return CodecModel(tiny_config())


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return path, save_model(tiny_model(), path)


def body(tensors: dict[str, torch.Tensor], **metadata: str) -> bytes:
    defaults = {"format": "vqcodec-model", "version": "1", "config": tiny_config().to_json()}
    return safetensors.torch.save(tensors, metadata={**defaults, **metadata})


def weights() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny_model().state_dict().items()}


def test_round_trip_is_exact(model_file: tuple[Path, str]) -> None:
    path, sha = model_file
    model, loaded_sha = read_model(path)
    assert loaded_sha == sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not model.training and model.config == tiny_config()
    original = tiny_model().eval()
    for (name, a), b in zip(original.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert read_model(path.read_bytes())[1] == sha


@pytest.mark.slow
def test_sha256_is_stable_across_saves_and_processes(model_file: tuple[Path, str], tmp_path: Path) -> None:
    path, sha = model_file
    assert {save_model(tiny_model(), tmp_path / f"{i}.safetensors") for i in range(3)} == {sha}
    script = (
        "import sys, torch; from vqcodec.models.config import tiny_config; from vqcodec.models.model import "
        "CodecModel; from vqcodec.zoo.modelfile import save_model; torch.manual_seed(0); "
        "print(save_model(CodecModel(tiny_config()), sys.argv[1]))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "p.safetensors")], capture_output=True)
    assert out.stdout.decode().strip() == sha
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_every_preset_config_round_trips() -> None:
    for make in PRESETS.values():
        config = make()
        assert config_from_dict(json.loads(config.to_json())) == config
    assert config_from_dict({}) == ModelConfig()  # missing keys take their defaults


def test_exported_model_reproduces_the_trained_networks(tmp_path: Path) -> None:
    images = make_images(tmp_path / "images", n=4)
    run = tmp_path / "run"
    train_vqvae(images, run, 2, batch_size=2, crop=32, device="cpu", config="tiny")
    for level in ("top", "bottom"):
        train_prior(run, level, 2, batch_size=2, device="cpu", crops_per_image=1)
    sha = export(run, tmp_path / "a.safetensors")
    assert export(run, tmp_path / "b.safetensors") == sha
    model, loaded_sha = read_model(tmp_path / "a.safetensors")
    assert loaded_sha == sha
    vqvae = VQVAE(tiny_config().vqvae).eval()
    vqvae.load_state_dict(read_model_state(checkpoint_path(run, "vqvae")))
    x = torch.rand(2, 3, 32, 48) - 0.5
    assert torch.equal(model.vqvae(x).recon, vqvae(x).recon)
    codes = vqvae.encode(x)
    for level, stage in enumerate(("prior-top", "prior-bottom")):
        prior = build_prior(tiny_config(), level).eval()
        prior.load_state_dict(read_model_state(checkpoint_path(run, stage)))
        assert torch.equal(
            model.priors[level](codes[level], codes[:level]), prior(codes[level], codes[:level])
        )
    images = sample_images(model, 2, 16, 24, seed=3)
    assert images.shape == (2, 3, 16, 24) and images.dtype == torch.uint8
    assert torch.equal(images, sample_images(model, 2, 16, 24, seed=3))


# --- rejections ------------------------------------------------------------------------------------


PICKLE = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."  # pickle of {"a": 1}
ZIP = b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(64)  # what torch.save writes


@pytest.mark.parametrize(
    "data", [PICKLE, ZIP, b"", b"1234", bytes(64), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      "]
)
def test_rejects_what_is_not_a_safetensors_file(data: bytes) -> None:
    with pytest.raises(ModelFileError, match="not a model file"):
        read_model(data)


def test_rejects_a_truncated_file(model_file: tuple[Path, str]) -> None:
    data = model_file[0].read_bytes()
    with pytest.raises(ModelFileError, match="corrupted"):
        read_model(data[:-100])


def test_rejects_missing_extra_and_misshapen_tensors() -> None:
    good = weights()
    missing = {k: v for k, v in good.items() if k != "priors.0.embed.weight"}
    with pytest.raises(ModelFileError, match=r"lacks 1 tensors.*priors.0.embed.weight"):
        read_model(body(missing))
    with pytest.raises(ModelFileError, match="unexpected tensors.*payload"):
        read_model(body({**good, "payload": torch.zeros(3)}))
    with pytest.raises(ModelFileError, match="expected shape"):
        read_model(body({**good, "priors.0.embed.weight": torch.zeros(3, 3)}))
    with pytest.raises(ModelFileError, match="expected dtype F32"):
        read_model(body({**good, "priors.0.embed.weight": good["priors.0.embed.weight"].double()}))


def test_only_bundled_files_skip_the_meta_device_check(
    model_file: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = []
    expected_tensors = modelfile.expected_tensors
    monkeypatch.setattr(
        modelfile, "expected_tensors", lambda config: checked.append(1) or expected_tensors(config)
    )
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    bundled = tmp_path / "mine.safetensors"
    bundled.write_bytes(model_file[0].read_bytes())
    zoo.load_cached(bundled)
    assert checked == []
    zoo.load_cached(model_file[0])  # a file outside the zoo
    assert checked == [1]
    good = weights()
    misshapen = body({**good, "priors.0.embed.weight": torch.zeros(3, 3)})
    with pytest.raises(ModelFileError, match="do not match the configuration"):
        read_model(misshapen, bundled=True)  # a broken bundled file still fails cleanly


def test_rejects_bad_metadata() -> None:
    good = weights()
    with pytest.raises(ModelFileError, match="metadata"):
        read_model(safetensors.torch.save(good))
    with pytest.raises(ModelFileError, match="metadata"):
        read_model(body(good, extra="1"))
    with pytest.raises(ModelFileError, match="format"):
        read_model(body(good, format="gguf"))
    with pytest.raises(ModelFileError, match="version"):
        read_model(body(good, version="3"))
    with pytest.raises(ModelFileError, match="metadata must hold exactly"):
        read_model(body(good, version="2"))  # version 2 has ranges
    with pytest.raises(ModelFileError, match="metadata must hold exactly"):
        read_model(body(good, ranges="{}"))  # version 1 has none
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_model(body(good, config="{"))
    raw = body(good)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"]["config"] = 5  # safetensors' own writer refuses this; a stranger's file need not
    text = json.dumps(header).encode()
    with pytest.raises(ModelFileError, match="metadata values must be strings"):
        read_model(len(text).to_bytes(8, "little") + text + raw[8 + n :])


def test_input_ranges_round_trip_and_version_1_files_have_none(tmp_path: Path) -> None:
    model = tiny_model()
    model.input_ranges = {"priors.0.out_conv": 5000, "vqvae.decoder.net.0": 70000}
    path = tmp_path / "ranged.safetensors"
    save_model(model, path)
    assert read_model(path)[0].input_ranges == model.input_ranges
    assert read_model(body(weights()))[0].input_ranges == {}  # a version 1 file: default ranges


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ("[1]", "JSON object"),
        ("{", "not valid JSON"),
        ('{"priors.0.embed": 5}', "no convolution"),
        ('{"priors.0.out_conv": 0}', "integer in 1..1048575"),
        ('{"priors.0.out_conv": 1048576}', "integer in 1..1048575"),
        ('{"priors.0.out_conv": 5.0}', "integer"),
        ('{"priors.0.out_conv": true}', "integer"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # deeper than Python's recursion
    ],
)
def test_rejects_bad_input_ranges(ranges: str, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        read_model(body(weights(), version="2", ranges=ranges))


def config_json(**changes: object) -> str:
    data = tiny_config().to_dict()
    for path, value in changes.items():
        *parents, key = path.split("__")
        target = data
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        target[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vqvae__levels__0__codebook_size": 100_000}, r"codebook_size = 100000 is out of bounds"),
        ({"vqvae__channels": 8192}, "channels = 8192 is out of bounds"),
        ({"priors__1__n_blocks": -1}, "out of bounds"),
        ({"vqvae__channels": True}, "must be an integer"),
        ({"vqvae__channels": "16"}, "must be an integer"),
        ({"priors__0__dropout": float("nan")}, "finite number"),
        ({"vqvae__levels": [{}] * 5}, "1 to 4 entries"),
        ({"vqvae__levels": [{}] * 3}, "3 levels"),
        ({"vqvae__bottom_stride": 6}, "power of two"),
        ({"priors__0__kernel_size": 4}, "odd kernel size"),
        ({"vqvae__surprise": 1}, r"unknown keys \['surprise'\]"),
        ({"priors__0__n_heads": 3}, "not divisible"),
        ({"priors__0__attention_context": "global"}, "must be one of window, raster"),
        ({"vqvae__in_channels": 1}, r"in_channels = 1 is out of bounds \[3, 3\]"),
        ({"priors__0__kernel_size": 1}, "kernel_size = 1 is out of bounds"),
    ],
)
def test_rejects_bad_configs(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        read_model(body(weights(), config=config_json(**changes)))


@pytest.mark.parametrize(
    "config", ["[" * 100_000 + "]" * 100_000, '{"vqvae": {"channels": 1' + "0" * 5000 + "}}"]
)
def test_rejects_configs_that_json_cannot_read(config: str) -> None:
    """Deeper than Python's recursion, or a number longer than int() reads: no other exception."""
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_model(body(weights(), config=config))


def test_a_model_the_codec_cannot_run_is_a_model_file_error(tmp_path: Path) -> None:
    """Well-formed files whose weights the integer engine refuses (non-finite here): the codec's
    loading says so as a model problem (exit status 3), not as bad input."""
    from vqcodec.codec import Codec

    model = tiny_model()
    with torch.no_grad():
        next(model.priors[0].parameters()).fill_(float("nan"))
    save_model(model, tmp_path / "nan.safetensors")
    with pytest.raises(ModelFileError, match="the codec cannot run this model: non-finite"):
        Codec.open(tmp_path / "nan.safetensors")


def test_rejects_files_over_the_size_limit(
    model_file: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modelfile, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ModelFileError, match="larger than"):
        read_model(model_file[0])
    with pytest.raises(ModelFileError, match="larger than"):
        read_model(model_file[0].read_bytes())


def test_loading_leaves_the_callers_rng_alone(model_file: tuple[Path, str]) -> None:
    state = torch.get_rng_state()
    read_model(model_file[0])
    assert torch.equal(torch.get_rng_state(), state)


def test_half_model_file_is_smaller_and_loads_as_float32(tmp_path: Path) -> None:
    model = tiny_model()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_model(model, full)
    save_model(model, half, half=True)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    loaded, _ = read_model(half)
    for (name, p), q in zip(model.named_parameters(), loaded.parameters(), strict=True):
        assert q.dtype == torch.float32
        assert torch.equal(q, p.detach().half().float()), name
    for (name, b), c in zip(model.named_buffers(), loaded.buffers(), strict=True):
        assert torch.equal(b, c), name
