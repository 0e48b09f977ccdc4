"""The training and model-file commands, end to end through click, on the tiny preset."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image
from synthetic_images import make_images
from torch import nn

from vqcodec.cli import main
from vqcodec.cli_errors import EXIT_OUTPUT_EXISTS, EXIT_USAGE
from vqcodec.models.config import tiny_config
from vqcodec.models.model import CodecModel
from vqcodec.zoo.modelfile import read_model, save_model

TINY = Path(__file__).resolve().parents[1] / "bitstream_spec" / "vectors" / "tiny.safetensors"


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args: str | Path) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def fails(*args: str | Path, message: str) -> None:
    """The command exits non-zero with one clean error line that says ``message``, no traceback:
    ``vqcodec: error:``, or click's ``Error:`` after the usage for a bad option (status 2)."""
    result = invoke(*args)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    prefix = "Error:" if result.exit_code == EXIT_USAGE else "vqcodec: error:"
    errors = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_train_export_sample(tmp_path: Path) -> None:
    images, val = make_images(tmp_path / "images"), make_images(tmp_path / "val", n=2, seed=1)
    run, model = tmp_path / "run", tmp_path / "model.safetensors"
    common = ["--steps", "3", "--device", "cpu", "--batch-size", "4", "--val-every", "2"]
    vqvae = ["train", "vqvae", "--data", images, "--out", run, "--crop", "32", "--preset", "tiny"]
    assert "Starting a new run" in ok(*vqvae, "--val", val, *common).stderr
    resumed = ok("train", "vqvae", "--data", images, "--out", run, "--crop", "32", *common, "--resume")
    assert "nothing to do" in resumed.stderr  # the run's own preset (tiny) is the default
    fails(*vqvae, *common, "--batch-size", "2", message="batch_size=2 (checkpoint: 4)")

    fails("export", "--run-dir", run, "--out", model, message="prior-top")
    result = ok("train", "prior", "--run-dir", run, "--level", "top", *common, "--crops-per-image", "2")
    assert "Extracting train codes" in result.stderr and "Extracting val codes" in result.stderr
    result = ok("train", "prior", "--run", run, "--level", "bottom", *common)  # --run: an alias
    assert "Reusing the train codes" in result.stderr
    fails(
        "train", "prior", "--run-dir", run, "--level", "middle", "--steps", "1", message="levels top, bottom"
    )

    sha = ok("export", "--run-dir", run, "--out", model).stdout.strip()
    assert sha == hashlib.sha256(model.read_bytes()).hexdigest()
    fails("export", "--run-dir", run, "--out", model, "--half", message=f"{model} exists (use --force")
    assert invoke("export", "--run-dir", run, "--out", model).exit_code == EXIT_OUTPUT_EXISTS  # as compress's
    assert hashlib.sha256(model.read_bytes()).hexdigest() == sha  # untouched
    half = ok("export", "--run", run, "--out", model, "--half", "--force").stdout.strip()
    assert half != sha and half == hashlib.sha256(model.read_bytes()).hexdigest()
    ok("export", "--run-dir", run, "--out", model, "-f")
    assert hashlib.sha256(model.read_bytes()).hexdigest() == sha  # deterministic
    vqvae = run / "vqvae" / "checkpoint.safetensors"
    fails("export", "--run-dir", run, "--out", vqvae, "--force", message="part of the run")

    out = tmp_path / "samples"
    result = ok("sample", "--model", model, "--n", "2", "--out", out, "--device", "cpu", "--size", "24x16")
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert [p.name for p in paths] == ["sample_0_000.png", "sample_0_001.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.size == (24, 16) and image.mode == "RGB"
    fails("sample", "--model", model, "--out", out, message="sample_0_000.png exists (use --force")
    fails("sample", "--model", model, "--out", out, "-f", "--size", "20x16", message="multiples of 8")
    fails("sample", "--model", model, "--out", out, "--size", "big", message="WIDTHxHEIGHT")
    fails("sample", "--model", images / "img1.png", "--out", out, "-f", message="not a model file")


def test_refine_a_models_decoder(tmp_path: Path) -> None:
    images = make_images(tmp_path / "images")
    run, model = tmp_path / "run", tmp_path / "refined.safetensors"
    assert "vqcodec train decoder" in ok("train", "from-model", "--model", TINY, "--out", run).stdout
    decoder = ["train", "decoder", "--run-dir", run, "--data", images, "--device", "cpu", "--crop", "32"]
    fails(*decoder, "--steps", "2", "--crop", "30", message="multiple of 8")
    assert "Stage 1b (decoder) done" in ok(*decoder, "--steps", "2").stderr
    result = ok("export", "--run-dir", run, "--out", model)  # measured on the decoder's images
    assert "decoder" in result.stderr and f"input ranges on 8 images of {images.resolve()}" in result.stderr


def test_calibrate_a_model_file(tmp_path: Path) -> None:
    """A model file written without ranges (vqcodec 0.1's) gets them; the file read is never changed."""
    images, old = make_images(tmp_path / "images"), tmp_path / "old.safetensors"
    save_model(CodecModel(tiny_config()), old)
    before = old.read_bytes()
    new = tmp_path / "new.safetensors"
    sha = ok("calibrate", "-m", old, "--images", images, "--out", new, "--n", "2").stdout.strip()
    assert sha == hashlib.sha256(new.read_bytes()).hexdigest() and old.read_bytes() == before
    model, _ = read_model(new)
    convs = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)}
    assert set(model.input_ranges) == convs  # every convolution: encoder, decoder and priors
    fails("calibrate", "-m", old, "--images", images, "--out", old, "-f", message="model file read")
    fails("calibrate", "-m", old, "--images", images, "--out", new, message="exists (use --force")
    assert old.read_bytes() == before


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    fails("train", "vqvae", "--data", empty, "--out", tmp_path / "run", "--steps", "1", message="no images")
    fails("train", "prior", "--run", empty, "--level", "top", "--steps", "1", message="train stage 1 first")
    fails("export", "--run", tmp_path / "missing", "--out", "m.safetensors", message="does not exist")


def test_stale_prior_is_not_exported(tmp_path: Path) -> None:
    """A prior trained before the VQ-VAE was trained further codes other codes than it now makes."""
    images = make_images(tmp_path / "images", n=3)
    run, model = tmp_path / "run", tmp_path / "model.safetensors"
    common = ["--device", "cpu", "--batch-size", "2", "--val-every", "100"]
    vqvae = ["train", "vqvae", "--data", images, "--out", run, "--crop", "32", "--preset", "tiny", *common]
    ok(*vqvae, "--steps", "2")
    for level in ("top", "bottom"):
        ok(
            "train",
            "prior",
            "--run-dir",
            run,
            "--level",
            level,
            "--steps",
            "1",
            "--crops-per-image",
            "1",
            *common,
        )
    ok(*vqvae, "--steps", "3")  # resumes: the VQ-VAE changes, its codes with it
    fails("export", "--run-dir", run, "--out", model, message="train prior --run-dir")
    assert not model.exists()
    ok("train", "prior", "--run-dir", run, "--level", "top", "--steps", "1", "--no-resume", *common)
    fails("export", "--run-dir", run, "--out", model, message="the bottom prior was trained")
    ok("train", "prior", "--run-dir", run, "--level", "bottom", "--steps", "1", "--no-resume", *common)
    ok("export", "--run-dir", run, "--out", model)


def test_sample_never_overwrites_unasked(tmp_path: Path) -> None:
    """Every target is checked before the draws; --force replaces a file (a symlink itself, never what it
    points to) atomically, but never the model file read."""
    out = tmp_path / "samples"
    out.mkdir()
    (out / "sample_0_001.png").write_text("precious")
    sample = ["sample", "-m", TINY, "--n", "3", "--out", out, "--size", "16x16", "--device", "cpu"]
    fails(*sample, message=f"{out / 'sample_0_001.png'} exists (use --force")
    assert invoke(*sample).exit_code == EXIT_OUTPUT_EXISTS
    assert sorted(p.name for p in out.iterdir()) == ["sample_0_001.png"]  # nothing drawn, nothing written
    assert (out / "sample_0_001.png").read_text() == "precious"

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "sample_0_002.png").symlink_to(victim)
    ok(*sample, "--force")
    assert victim.read_text() == "precious" and not (out / "sample_0_002.png").is_symlink()
    names = [f"sample_0_00{i}.png" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary file left behind
    for i in range(3):
        with Image.open(out / f"sample_0_00{i}.png") as image:
            assert image.size == (16, 16)

    model = out / "sample_0_000.png"
    model.write_bytes(TINY.read_bytes())
    fails("sample", "-m", model, "--n", "1", "--out", out, "--size", "16x16", "-f", message="the model file")
    assert model.read_bytes() == TINY.read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "100000x100000"], "too large (limits: 16384 px a side"),
        (["--size", "16384x512"], "4194304 px in all"),
        (["--size", "0x16"], "sides must be positive"),
        (["--n", "5", "--size", "1024x1024"], "more than one run draws (4194304)"),
        (["--temperature", "1e-300"], "x>=1e-06"),
        (["--temperature", "nan"], "not a finite number"),
        (["--device", "gpu"], "invalid device 'gpu'"),
        (["--device", "cuda"], "CUDA is not available"),
    ],
)
def test_sample_refuses_bad_options_before_drawing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    """A size, batch or temperature the draws cannot take is a usage error, not a crash or an OOM kill."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "samples"
    fails("sample", "-m", TINY, "--out", out, *args, message=message)
    assert not out.exists()


@pytest.mark.parametrize(
    ("n", "size", "temperature", "message"),
    [(5, 1024, 1.0, "more than one run draws"), (1, 0, 1.0, "at least one"), (1, 16, 1e-9, "temperature")],
)
def test_the_sampling_api_keeps_the_commands_limits(
    tmp_path: Path, n: int, size: int, temperature: float, message: str
) -> None:
    from vqcodec.sample import sample_to_folder

    with pytest.raises(ValueError, match=message):
        sample_to_folder(TINY, tmp_path / "s", n, size, size, temperature, device="cpu")
    assert not (tmp_path / "s").exists()


def test_sample_at_the_least_temperature(tmp_path: Path) -> None:
    """The lowest temperature allowed draws the most likely codes, whatever the seed."""
    sample = ["sample", "-m", TINY, "--n", "2", "--size", "16x16", "--temperature", "1e-6"]
    ok(*sample, "--out", tmp_path / "a", "--seed", "1")
    ok(*sample, "--out", tmp_path / "b", "--seed", "2")
    for i in range(2):
        assert (tmp_path / "a" / f"sample_1_00{i}.png").read_bytes() == (
            tmp_path / "b" / f"sample_2_00{i}.png"
        ).read_bytes()


@pytest.mark.parametrize("command", ["vqvae", "prior", "decoder"])
@pytest.mark.parametrize(("device", "message"), [("gpu", "invalid device 'gpu'"), ("cuda", "not available")])
def test_training_refuses_an_unusable_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, device: str, message: str
) -> None:
    """As compress's: an unknown device, or CUDA where torch has none, is a usage error while parsing."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    required = {
        "vqvae": ["--data", tmp_path, "--out", tmp_path / "run"],
        "prior": ["--run-dir", tmp_path, "--level", "top"],
        "decoder": ["--run-dir", tmp_path, "--data", tmp_path],
    }[command]
    fails("train", command, *required, "--steps", "1", "--device", device, message=message)
    assert not (tmp_path / "run").exists()


TRAINING_COMMANDS = [["train", "vqvae"], ["train", "prior"]]


def test_training_options_pass_through_torchrun() -> None:
    """torchrun's own parser takes an unambiguous prefix of its options as its own: every option of the
    training commands (but the --run alias, which torchrun rejects) must reach vqcodec unchanged, and so
    must the torchrun examples of the help."""
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()

    def passes(args: list[str]) -> bool:
        parsed = parser.parse_args(["--nproc-per-node", "2", "-m", "vqcodec", *args])
        return parsed.training_script == "vqcodec" and parsed.training_script_args == args

    for command in TRAINING_COMMANDS:
        names = [name for param in main.commands["train"].commands[command[1]].params for name in param.opts]
        names += [
            name
            for param in main.commands["train"].commands[command[1]].params
            for name in param.secondary_opts
        ]
        for name in names:
            if name != "--run":
                assert passes([*command, name, "1"]), name
    examples = [
        line.split() for line in ok("train", "--help").output.splitlines() if "torchrun" in line.split()[:1]
    ]
    assert len(examples) == 2
    for example in examples:
        assert example[:4] == ["torchrun", "--nproc-per-node", "8", "-m"]
        assert passes(example[5:])


@pytest.mark.parametrize(
    "command",
    [[], ["train"], ["train", "vqvae"], ["train", "prior"], ["train", "decoder"], ["export"], ["sample"]],
)
def test_help_teaches_with_examples(command: list[str]) -> None:
    result = ok(*command, "--help")
    assert "Usage:" in result.output and "vqcodec" in result.output


def test_a_refused_start_leaves_no_run_behind(tmp_path: Path) -> None:
    """`--resume` in a new folder failed after writing its config.json: a second try with another preset
    was then refused as "another model configuration"."""
    images, run = make_images(tmp_path / "images", n=2), tmp_path / "run"
    vqvae = [
        "train",
        "vqvae",
        "--data",
        images,
        "--out",
        run,
        "--crop",
        "32",
        "--steps",
        "1",
        "--device",
        "cpu",
    ]
    fails(*vqvae, "--preset", "tiny", "--resume", message="cannot resume: no checkpoint")
    assert not (run / "config.json").exists()
    ok(*vqvae, "--preset", "tiny", "--batch-size", "2")
