"""Training: the data stream, both stages learning, exact resumes, the code cache, 3 levels, DDP on CPU."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from processes import run_workers
from safetensors import safe_open
from synthetic_images import make_images

from vqcodec.models.config import PRESETS, LevelConfig, PriorConfig, three_level_config
from vqcodec.models.model import build_prior
from vqcodec.train.checkpoint import checkpoint_path, read_state
from vqcodec.train.data import ImageFolder, StreamSampler, list_images
from vqcodec.train.dist import Dist
from vqcodec.train.evaluate import nll_bits
from vqcodec.train.export import calibrate_model_file, export
from vqcodec.train.extract import extract_codes, load_codes
from vqcodec.train.stage1 import train_vqvae
from vqcodec.train.stage2 import resolve_level, train_prior
from vqcodec.zoo.modelfile import read_model

CROP = 32


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def val_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("val"), n=3, seed=1)


def stage1(images: Path, run: Path, steps: int, **options) -> dict:
    defaults = dict(batch_size=4, crop=CROP, device="cpu", config="tiny", log_every=1)
    return train_vqvae(images, run, steps, **{**defaults, **options})


def stage2(run: Path, level: str, steps: int, **options) -> dict:
    defaults = dict(batch_size=4, device="cpu", crops_per_image=2, log_every=1)
    return train_prior(run, level, steps, **{**defaults, **options})


def tensors(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(checkpoint_path(run, stage))


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def metrics(run: Path, stage: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["stage"] == stage]


@contextlib.contextmanager
def interrupted_at_step(step: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The training run inside is interrupted (KeyboardInterrupt) as its data stream reaches ``step``."""
    batch = StreamSampler.batch

    def crash(self: StreamSampler, at: int) -> list[tuple[int, int]]:
        if at == step:
            raise KeyboardInterrupt
        return batch(self, at)

    monkeypatch.setattr(StreamSampler, "batch", crash)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(StreamSampler, "batch", batch)


@pytest.fixture(scope="module")
def run8(tmp_path_factory: pytest.TempPathFactory, images: Path, val_images: Path) -> Path:
    """A stage-1 run of 8 uninterrupted steps, with validation at the end."""
    run = tmp_path_factory.mktemp("run8")
    stage1(images, run, 8, val_data=val_images)
    return run


# --- data ------------------------------------------------------------------------------------------


def test_images_are_found_recursively_and_case_insensitively(images: Path) -> None:
    names = [p.relative_to(images).as_posix() for p in list_images(images)]
    assert names[0] == "img0.JPG" and names[-1] == "sub/img7.png" and len(names) == 8


def test_an_unreadable_image_is_refused_before_training(images: Path, tmp_path: Path) -> None:
    """It failed when a DataLoader worker first drew it, hours into a run, as a flattened traceback."""
    from torch.utils.data import DataLoader

    from vqcodec.cli_errors import one_line

    mixed = tmp_path / "mixed"
    shutil.copytree(images, mixed)
    (mixed / "zz.jpg").write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot read an image: .*zz.jpg: not an image"):
        ImageFolder(mixed, 32)
    (mixed / "zz.jpg").unlink()
    data = ImageFolder(mixed, 32)
    data.paths[0].write_bytes(data.paths[0].read_bytes()[:200])  # a header, then nothing: found later
    with pytest.raises(ValueError) as caught:
        next(iter(DataLoader(data, sampler=[(0, 1)], num_workers=1)))
    assert one_line(caught.value).startswith("cannot read an image: ") and "Traceback" not in one_line(
        caught.value
    )


def test_crops_are_deterministic_in_range_and_flipped_sometimes(images: Path) -> None:
    data = ImageFolder(images, 64)
    a, b = data[(3, 123)], data[(3, 123)]
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32 and torch.equal(a, b)
    assert a.min() >= -0.5 and a.max() <= 0.5
    assert len({data[(3, seed)].sum().item() for seed in range(6)}) == 6
    big = ImageFolder(images, 128)[(0, 1)]  # 128x96 images are upscaled to fit a 128 crop
    assert big.shape == (3, 128, 128)
    centre = ImageFolder(images, 64, train=False)
    assert torch.equal(centre[(2, 0)], centre[(2, 99)])


def test_stream_is_a_function_of_the_step_and_split_over_ranks() -> None:
    full = list(StreamSampler(10, 4, seed=7, start=0, stop=8))
    assert list(StreamSampler(10, 4, seed=7, start=5, stop=8)) == full[5:]
    halves = [list(StreamSampler(10, 4, seed=7, start=0, stop=8, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves, strict=True)] == full
    stream = [index for batch in full for index, _ in batch]  # 32 samples: 3 epochs and a bit
    assert sorted(stream[:10]) == sorted(stream[10:20]) == list(range(10)) and stream[:10] != stream[10:20]


# --- stage 1 ---------------------------------------------------------------------------------------


def test_vqvae_loss_drops(images: Path, tmp_path: Path) -> None:
    stage1(images, tmp_path, 40, batch_size=8, lr=2e-3)
    mse = [r["mse"] for r in metrics(tmp_path, "vqvae")]
    assert len(mse) == 40
    assert sum(mse[-5:]) < 0.7 * sum(mse[:5])
    assert (tmp_path / "config.json").exists()


def test_interrupted_vqvae_run_resumes_exactly(
    images: Path, val_images: Path, run8: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with interrupted_at_step(6, monkeypatch):
        stage1(images, tmp_path, 8, ckpt_every=4, val_data=val_images, val_every=4)
    assert read_state(checkpoint_path(tmp_path, "vqvae"))["step"] == 4

    stage1(images, tmp_path, 8, ckpt_every=4, val_data=val_images, val_every=4)
    assert_identical(tensors(tmp_path, "vqvae"), tensors(run8, "vqvae"))
    resumed, straight = metrics(tmp_path, "vqvae"), metrics(run8, "vqvae")
    assert [r["step"] for r in resumed if "loss" in r] == list(range(1, 9))  # steps 5, 6 logged once
    assert [r["loss"] for r in resumed if "loss" in r] == [r["loss"] for r in straight if "loss" in r]


def test_resume_refuses_other_settings(images: Path, run8: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run8, run)
    with pytest.raises(ValueError, match="batch_size=8"):
        stage1(images, run, 9, batch_size=8)
    with pytest.raises(ValueError, match="another model configuration"):
        stage1(images, run, 9, config="default")
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        stage1(images, tmp_path / "new", 9, resume=True)
    with pytest.raises(ValueError, match="multiple of 8"):
        stage1(images, tmp_path / "new", 9, crop=36)


# --- stage 2 ---------------------------------------------------------------------------------------


def test_codes_are_cached_and_follow_the_vqvae(images: Path, run8: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run8, run)
    paths = extract_codes(run, crops_per_image=3, device="cpu")
    assert set(paths) == {"train", "val"}  # the validation folder is stage 1's
    top, bottom = load_codes(paths["train"])
    assert top.shape == (24, 4, 4) and bottom.shape == (24, 8, 8) and top.dtype == torch.int16
    mtime = paths["train"].stat().st_mtime_ns
    assert extract_codes(run, device="cpu") == paths and paths["train"].stat().st_mtime_ns == mtime

    stage1(images, run, 9)  # the VQ-VAE changes: the codes are extracted again
    extract_codes(run, device="cpu")
    assert paths["train"].stat().st_mtime_ns != mtime and len(load_codes(paths["train"])[0]) == 24


def test_prior_loss_drops(run8: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run8, run)
    stage2(run, "top", 40, batch_size=16, lr=3e-3, crops_per_image=4)
    bits = [r["bits"] for r in metrics(run, "prior-top") if "bits" in r]
    assert sum(bits[-5:]) < 0.85 * sum(bits[:5])
    last = metrics(run, "prior-top")[-1]
    assert last["step"] == 40 and {"train_bits", "val_bits"} <= last.keys()


@pytest.mark.parametrize("level", ["top", "bottom"])
def test_prior_resumes_exactly(run8: Path, tmp_path: Path, level: str) -> None:
    straight, resumed = tmp_path / "a", tmp_path / "b"
    shutil.copytree(run8, straight)
    shutil.copytree(run8, resumed)
    stage2(straight, level, 6)
    stage2(resumed, level, 3)
    stage2(resumed, level, 6)
    assert_identical(tensors(straight, f"prior-{level}"), tensors(resumed, f"prior-{level}"))


@pytest.mark.parametrize("training", [True, False])
def test_nll_bits_leaves_the_prior_in_the_mode_it_found(training: bool) -> None:
    config = PRESETS["tiny"]()
    prior = build_prior(config, 0).train(training)
    frozen = next(prior.children()).eval()  # a mixed mode is kept too, module by module
    modes = [m.training for m in prior.modules()]
    codes = [torch.randint(0, config.vqvae.levels[0].codebook_size, (4, 4, 4))]
    bits = nll_bits(prior, codes, torch.arange(4), 2, Dist(0, 1, torch.device("cpu")), "fp32")
    assert 0 < bits < 100
    assert [m.training for m in prior.modules()] == modes and not frozen.training


def test_levels_by_name_or_index() -> None:
    assert [resolve_level(x, 3) for x in ("top", "middle", "bottom", "2", 1)] == [0, 1, 2, 2, 1]
    with pytest.raises(ValueError, match="top, bottom"):
        resolve_level("middle", 2)


def test_three_level_model_trains_and_exports(images: Path, tmp_path: Path) -> None:
    small_prior = PriorConfig(channels=8, n_blocks=1, attention_every=0, n_cond_blocks=1, cond_channels=8)
    config = replace(
        three_level_config(),
        vqvae=replace(
            three_level_config().vqvae,
            channels=16,
            res_channels=8,
            n_res_blocks=1,
            levels=(LevelConfig(codebook_size=16, code_dim=8),) * 3,
        ),
        priors=(replace(small_prior, n_cond_blocks=0), small_prior, small_prior),
    )
    stage1(images, tmp_path, 1, config=config)
    stage2(tmp_path, "middle", 1)
    stage2(tmp_path, "bottom", 1)
    assert [r["step"] for r in metrics(tmp_path, "prior-bottom")] == [1, 1]  # training, validation
    with pytest.raises(FileNotFoundError, match="prior-top"):
        export(tmp_path, tmp_path / "model.safetensors")
    export(tmp_path, tmp_path / "model.safetensors", allow_untrained=True)
    model, _ = read_model(tmp_path / "model.safetensors")
    assert model.config == config


def test_export_refuses_priors_of_an_older_vqvae(
    images: Path, run8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, out = tmp_path / "run", tmp_path / "model.safetensors"
    shutil.copytree(run8, run)
    stage2(run, "top", 1)
    export(run, out, allow_untrained=True)  # an untrained bottom prior is not checked
    stage1(images, run, 9)  # the VQ-VAE, resumed, moves on: the top prior's codes are gone
    with pytest.raises(ValueError, match=r"top prior .*step 8.*step 9.*--level top --no-resume --steps 1\)"):
        export(run, out, allow_untrained=True, force=True)
    with pytest.raises(ValueError, match="cannot resume with different settings: codes="):
        stage2(run, "top", 1)  # hence the --no-resume of the message
    stage2(run, "top", 1, resume=False)
    export(run, out, allow_untrained=True, force=True)

    # A prior checkpoint that does not say what it was trained on is exported with a warning.
    path = checkpoint_path(run, "prior-top")
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    state = json.loads(metadata["state"])
    del state["meta"]["codes_source"]
    metadata["state"] = json.dumps(state)
    safetensors.torch.save_file(safetensors.torch.load_file(path), path, metadata=metadata)
    stage1(images, run, 10)
    capsys.readouterr()
    export(run, out, allow_untrained=True, force=True)
    assert "does not record which VQ-VAE" in capsys.readouterr().err


def test_export_never_overwrites_unasked_or_the_run(run8: Path, tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "models" / "model.safetensors"
    shutil.copytree(run8, run)
    sha = export(run, out, allow_untrained=True)
    with pytest.raises(FileExistsError, match=r"model.safetensors exists \(use --force to overwrite it\)"):
        export(run, out, allow_untrained=True, half=True)
    assert export(run, out, allow_untrained=True, force=True) == sha
    assert [p.name for p in out.parent.iterdir()] == ["model.safetensors"]  # no temporary file left
    for own in ("config.json", "metrics.jsonl", "vqvae/checkpoint.safetensors", "prior-top/new.safetensors"):
        with pytest.raises(FileExistsError, match="is part of the run"):
            export(run, run / own, allow_untrained=True, force=True)
    assert read_state(checkpoint_path(run, "vqvae"))["step"] == 8
    export(run, run / "model.safetensors", allow_untrained=True)  # beside the run's files is fine


def test_only_model_file_names_are_written(run8: Path, images: Path, tmp_path: Path) -> None:
    """With --force, export and calibrate replaced whatever OUT named: a calibration image, say."""
    run = tmp_path / "run"
    shutil.copytree(run8, run)
    image = list_images(images)[0]
    before = image.read_bytes()
    model = tmp_path / "a.safetensors"
    export(run, model, allow_untrained=True, calibration=images)
    with pytest.raises(ValueError, match="a model file's name ends in .safetensors"):
        export(run, image, allow_untrained=True, force=True, calibration=images)
    with pytest.raises(ValueError, match="a model file's name ends in .safetensors"):
        calibrate_model_file(model, images, image, n=2, force=True)
    assert image.read_bytes() == before
    with pytest.raises(NotADirectoryError, match="a.safetensors is not a folder"):
        calibrate_model_file(model, images, model / "b.safetensors", n=2)
    calibrate_model_file(model, images, tmp_path / "new" / "b.safetensors", n=2)  # its folder is made


# --- several processes -----------------------------------------------------------------------------


def _ddp_worker(rank: int, port: int, images: str, run: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    stage1(Path(images), Path(run), 3, val_data=Path(images), val_every=2)
    stage2(Path(run), "bottom", 2)


@pytest.mark.slow
def test_ddp_on_cpu(images: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_workers(_ddp_worker, (port, str(images), str(tmp_path)))
    assert read_state(checkpoint_path(tmp_path, "vqvae"))["step"] == 3
    assert read_state(checkpoint_path(tmp_path, "prior-bottom"))["step"] == 2
    assert [r["step"] for r in metrics(tmp_path, "vqvae")] == [1, 2, 2, 3, 3]  # rank 0 logs alone


# --- new priors for a trained model ----------------------------------------------------------------

TINY_MODEL = Path(__file__).resolve().parents[1] / "bitstream_spec" / "vectors" / "tiny.safetensors"


def test_new_priors_for_a_trained_models_codes(images: Path, tmp_path: Path) -> None:
    from vqcodec.train.from_model import run_from_model

    run = tmp_path / "run"
    config = run_from_model(TINY_MODEL, run, ["top.channels=8", "bottom.n_blocks=1"])
    assert config.priors[0].channels == 8 and config.priors[1].n_blocks == 1
    with pytest.raises(ValueError, match="no training images"):
        stage2(run, "top", 2, crop=CROP)
    for level in ("top", "bottom"):
        stage2(run, level, 2, crop=CROP, data=images)
    export(run, tmp_path / "new.safetensors")
    new, _ = read_model(tmp_path / "new.safetensors")
    old, _ = read_model(TINY_MODEL)
    assert new.config.priors[0].channels == 8
    assert_identical(new.vqvae.state_dict(), old.vqvae.state_dict())  # the same codes
    with pytest.raises(FileExistsError):
        run_from_model(TINY_MODEL, run, [])
    unbuildable = ("top.n_heads=3", "these settings build no model: .*not divisible")
    for bad, message in (
        ("top.channels", "LEVEL.KEY=VALUE"),
        ("middle.channels=8", "unknown level"),
        unbuildable,
    ):
        with pytest.raises(ValueError, match=message):
            run_from_model(TINY_MODEL, tmp_path / "other", [bad])
    assert not (tmp_path / "other").exists()  # it said "ready", and the folder could not be made again


# --- a refined decoder for a trained model's codes -------------------------------------------------


def test_refined_decoder_keeps_codes_and_priors(images: Path, val_images: Path, tmp_path: Path) -> None:
    from vqcodec.train.checkpoint import save_checkpoint
    from vqcodec.train.decoder import DECODER_PARTS, train_decoder
    from vqcodec.train.from_model import run_from_model

    run = tmp_path / "run"
    run_from_model(TINY_MODEL, run, [])
    with pytest.raises(ValueError, match="records no training images"):
        export(run, tmp_path / "same.safetensors")
    export(run, tmp_path / "same.safetensors", calibration=images)  # the model's own priors come along
    same, _ = read_model(tmp_path / "same.safetensors")
    old, _ = read_model(TINY_MODEL)
    assert_identical(same.state_dict(), old.state_dict())
    assert same.input_ranges == old.input_ranges  # the model's, not measured on other images

    train_decoder(
        run, images, 6, batch_size=4, crop=CROP, device="cpu", lr=1e-3, val_data=val_images, log_every=1
    )
    lrs = [r["lr"] for r in metrics(run, "decoder") if "lr" in r]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[0] / 10  # the cosine's decay
    assert "val_psnr" in metrics(run, "decoder")[-1]
    export(run, tmp_path / "refined.safetensors")
    new, _ = read_model(tmp_path / "refined.safetensors")
    assert_identical(new.priors.state_dict(), old.priors.state_dict())
    new_vqvae, old_vqvae = new.vqvae.state_dict(), old.vqvae.state_dict()
    changed = {key for key in old_vqvae if not torch.equal(new_vqvae[key], old_vqvae[key])}
    assert changed and all(key.startswith(DECODER_PARTS) for key in changed)  # the same codes

    # a stage-1 checkpoint that changed since: the refined decoder belongs to another VQ-VAE
    vqvae = old.vqvae
    with torch.no_grad():
        vqvae.encoders[0].net[0].weight.add_(0.01)
    scaler = torch.amp.GradScaler("cpu", False)
    save_checkpoint(checkpoint_path(run, "vqvae"), vqvae, torch.optim.Adam(vqvae.parameters()), scaler, 1, {})
    with pytest.raises(ValueError, match="another VQ-VAE"):
        export(run, tmp_path / "stale.safetensors")


def test_a_decoder_learns_through_the_integer_roundings(
    images: Path, val_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--quantised learns on the input ranges of the model the run came from (else measured as export
    would), keeps them through a resume, and export writes them, not new ones measured on the changed
    weights."""
    from vqcodec.exact.calibrate import decoder_ranges
    from vqcodec.exact.quantise import ranges_under
    from vqcodec.train.data import CALIBRATION_IMAGES, calibration_images
    from vqcodec.train.decoder import DECODER_PARTS, train_decoder
    from vqcodec.train.from_model import run_from_model

    run = tmp_path / "run"
    run_from_model(TINY_MODEL, run, [])
    with pytest.raises(ValueError, match="is the prior of the model the run came from.*--no-resume"):
        stage2(run, "bottom", 2, crop=CROP, data=images)  # said: batch_size=4 (checkpoint: None), ...
    old, _ = read_model(TINY_MODEL)
    with torch.no_grad():
        codes = [old.vqvae.encode(image) for image in calibration_images(images, CALIBRATION_IMAGES, 8)]
    model_ranges = ranges_under(old.input_ranges, "vqvae.")
    measured = {name: value for name, value in model_ranges.items() if name.startswith(DECODER_PARTS)}
    options = dict(batch_size=4, crop=CROP, device="cpu", lr=1e-2, log_every=1, ckpt_every=2)
    with interrupted_at_step(3, monkeypatch):
        train_decoder(run, images, 4, quantised=True, **options)
    assert read_state(checkpoint_path(run, "decoder"))["meta"]["input_ranges"] == measured
    with pytest.raises(ValueError, match="learnt through the integer roundings: resume it with --quantised"):
        train_decoder(run, images, 4, **options)
    train_decoder(run, images, 4, val_data=val_images, quantised=True, **options)  # resumed
    assert read_state(checkpoint_path(run, "decoder"))["meta"]["input_ranges"] == measured
    assert "val_psnr" in metrics(run, "decoder")[-1]

    export(run, tmp_path / "quantised.safetensors")
    new, _ = read_model(tmp_path / "quantised.safetensors")
    exported = ranges_under(new.input_ranges, "vqvae.")
    assert {name: exported[name] for name in measured} == measured
    with torch.no_grad():
        assert decoder_ranges(new.vqvae, codes) != measured  # what export would have measured instead


def test_a_run_resumes_only_on_its_images(images: Path, tmp_path: Path) -> None:
    """Resuming with another --data (the validation folder, say) went unnoticed; a moved folder is fine."""
    run, moved = tmp_path / "run", tmp_path / "moved"
    stage1(images, run, 1)
    other = make_images(tmp_path / "other", n=3, seed=5)
    with pytest.raises(ValueError, match="cannot resume with different settings: images="):
        stage1(other, run, 2)
    shutil.copytree(images, moved)
    stage1(moved, run, 2)


def test_settings_an_earlier_version_did_not_record_are_checked_only_where_recorded() -> None:
    from vqcodec.train.loop import _check_same_settings

    _check_same_settings({"lr": 1.0}, {"lr": 1.0, "images": "ab12"}, {})  # a checkpoint of vqcodec 0.2.3
    with pytest.raises(ValueError, match=r"crop=32 \(checkpoint: None\)"):
        _check_same_settings({"lr": 1.0}, {"lr": 1.0, "crop": 32}, {})
    with pytest.raises(ValueError, match="images="):
        _check_same_settings({"images": "cd34"}, {"images": "ab12"}, {})


def test_a_prior_trains_without_validation_when_its_images_are_gone(
    images: Path, val_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run moved to another machine lost stage 1's validation folder: train prior could not go on."""
    val, run = tmp_path / "val", tmp_path / "run"
    shutil.copytree(val_images, val)
    stage1(images, run, 1, val_data=val)
    shutil.rmtree(val)
    stage2(run, "top", 1)
    assert "validation images" in capsys.readouterr().err and not (run / "codes" / "val.safetensors").exists()


def test_a_refused_resume_leaves_the_cached_codes(run8: Path, tmp_path: Path) -> None:
    """The settings were checked after the codes were extracted again: the refusal came minutes late
    and had replaced the codes that the checkpoint was trained on. Unreadable run files are errors of
    their own, not internal ones."""
    run = tmp_path / "run"
    shutil.copytree(run8, run)
    stage2(run, "top", 2)
    cache = (run / "codes" / "train.safetensors").read_bytes()
    with pytest.raises(ValueError, match="codes=.*--crops-per-image"):
        stage2(run, "top", 3, crops_per_image=3)
    assert (run / "codes" / "train.safetensors").read_bytes() == cache
    stage2(run, "top", 3)  # resumes on the codes it was trained on
    (run / "prior-bottom").mkdir()
    shutil.copy(checkpoint_path(run, "prior-top"), checkpoint_path(run, "prior-bottom"))
    with pytest.raises(ValueError, match="prior-bottom/checkpoint.safetensors does not fit the run's config"):
        export(run, tmp_path / "model.safetensors")  # was torch's RuntimeError: an internal error
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"stage": "vqvae", "step": 9, "lo')  # cut short by a full disk: blocked every stage
    stage2(run, "top", 3)
    assert all(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    codes = [level.clone() for level in load_codes(run / "codes" / "train.safetensors")]  # not the mmap
    (run / "codes" / "train.safetensors").write_bytes(cache[:100])  # a cache cut short: made again
    stage2(run, "top", 4)
    for made, again in zip(codes, load_codes(run / "codes" / "train.safetensors"), strict=True):
        assert torch.equal(made, again)


def test_a_prior_learns_through_the_integer_roundings(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--quantised fine-tunes the run's prior from its weights with their ranges (a model's own here),
    kept through a resume and exported; a prior without ranges gets them measured as export would; a
    plain run refuses a fine-tune's checkpoint."""
    from vqcodec.exact.calibrate import prior_ranges
    from vqcodec.exact.quantise import ranges_under
    from vqcodec.train.data import CALIBRATION_IMAGES, calibration_images
    from vqcodec.train.from_model import run_from_model
    from vqcodec.train.stage2 import _prior_ranges

    fresh = tmp_path / "fresh"
    run_from_model(TINY_MODEL, fresh, ["bottom.channels=8"])  # a new bottom prior: none to fine-tune
    with pytest.raises(FileNotFoundError, match="no prior at"):
        stage2(fresh, "bottom", 2, crop=CROP, data=images, quantised=True)
    run = tmp_path / "run"
    run_from_model(TINY_MODEL, run, [])
    with pytest.raises(ValueError, match="is the prior of the model the run came from.*--no-resume"):
        stage2(run, "bottom", 2, crop=CROP, data=images)  # said: batch_size=4 (checkpoint: None), ...
    old, _ = read_model(TINY_MODEL)
    with torch.no_grad():
        codes = [old.vqvae.encode(image) for image in calibration_images(images, CALIBRATION_IMAGES, 8)]
    weights = old.priors[1].state_dict()
    assert _prior_ranges(run, old.config, 1, weights, images) == prior_ranges(
        old.priors[1], [(maps[1], maps[:1]) for maps in codes]
    )
    measured = ranges_under(old.input_ranges, "priors.1.")
    options = dict(crop=CROP, data=images, lr=1e-7, ckpt_every=2, val_every=2)
    with interrupted_at_step(3, monkeypatch):
        stage2(run, "bottom", 4, quantised=True, **options)
    state = read_state(checkpoint_path(run, "prior-bottom"))
    assert state["meta"]["input_ranges"] == measured
    trained = {
        k.removeprefix("model/"): v for k, v in tensors(run, "prior-bottom").items() if k.startswith("model/")
    }
    for key, value in old.priors[1].state_dict().items():  # nudged from the model's weights, not anew
        assert torch.allclose(trained[key], value, atol=1e-5), key
    with pytest.raises(ValueError, match="learnt through the integer roundings: resume it with --quantised"):
        stage2(run, "bottom", 4, **options)
    with pytest.raises(ValueError, match=r"steps=6 \(checkpoint: 4\)"):  # another cosine
        stage2(run, "bottom", 6, quantised=True, **options)
    stage2(run, "bottom", 4, quantised=True, **options)  # resumed
    lrs = [r["lr"] for r in metrics(run, "prior-bottom") if "lr" in r]
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] < lrs[0] / 2  # the cosine's decay
    assert read_state(checkpoint_path(run, "prior-bottom"))["meta"]["input_ranges"] == measured

    export(run, tmp_path / "quantised.safetensors", calibration=images)
    new, _ = read_model(tmp_path / "quantised.safetensors")
    assert ranges_under(new.input_ranges, "priors.1.") == measured


def test_new_priors_keep_the_unchanged_levels_prior(tmp_path: Path) -> None:
    from vqcodec.train.from_model import run_from_model

    run_from_model(TINY_MODEL, tmp_path, ["top.channels=8"])
    assert not checkpoint_path(tmp_path, "prior-top").exists()
    assert checkpoint_path(tmp_path, "prior-bottom").exists()


def test_refined_decoder_resumes_exactly(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vqcodec.train.decoder import train_decoder
    from vqcodec.train.from_model import run_from_model

    options = dict(batch_size=4, crop=CROP, device="cpu", ckpt_every=3)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for run in (straight, resumed):
        run_from_model(TINY_MODEL, run, [])
    train_decoder(straight, images, 6, **options)

    with interrupted_at_step(4, monkeypatch):
        train_decoder(resumed, images, 6, **options)
    train_decoder(resumed, images, 6, **options)
    assert_identical(tensors(resumed, "decoder"), tensors(straight, "decoder"))


def test_a_thin_image_is_cropped_without_resizing_it_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """2x8192 pixels upscaled whole for a 256-pixel crop were 268 M pixels (800 MB) per crop; only the
    crop's part is resized now, to nearly the pixels that resizing the whole gives."""
    import random

    import numpy as np
    from PIL import Image

    from vqcodec.train import data

    thin = Image.new("RGB", (2, 8192), (10, 200, 30))
    assert np.all(np.asarray(data.random_crop(thin, 256, random.Random(0))) == (10, 200, 30))
    assert data.centre_crop(thin, 256).size == (256, 256)
    y, x = np.mgrid[0:120, 0:90]
    photo = Image.fromarray(np.stack([x * 2, y * 2, x + y], axis=-1).astype(np.uint8))
    whole = np.asarray(data.random_crop(photo, 64, random.Random(1)), dtype=int)
    monkeypatch.setattr(data, "WHOLE_RESIZE_PIXELS", 0)
    part = np.asarray(data.random_crop(photo, 64, random.Random(1)), dtype=int)
    assert np.abs(whole - part).max() <= 1
