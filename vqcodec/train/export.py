"""Export: turn a training run folder into one model file (VQ-VAE + every level's prior), with the input
ranges of its integer layers measured on training images; or measure them for an existing model file.

A prior is trained on the codes of one VQ-VAE checkpoint, whose SHA-256 its checkpoint records
(``meta["codes_source"]["vqvae_sha256"]``, see ``stage2.train_prior``). If the VQ-VAE has been trained
further since, the prior's probabilities are for codes the exported VQ-VAE no longer produces: files
would still decode, but cost more bits than the priors promise. Export refuses such a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vqcodec.exact.calibrate import calibrate
from vqcodec.models.config import level_names
from vqcodec.models.model import CodecModel
from vqcodec.train.checkpoint import checkpoint_path, file_sha256, load_weights, read_model_state, read_state
from vqcodec.train.data import CALIBRATION_IMAGES, calibration_images
from vqcodec.train.decoder import STAGE as DECODER_STAGE
from vqcodec.train.decoder import refined_decoder
from vqcodec.train.extract import cached_source, code_path
from vqcodec.train.run import prior_stage, read_config, say
from vqcodec.zoo.modelfile import read_model, save_model


def _run_files(run: Path, n_levels: int) -> list[Path]:
    """The files and folders a run owns, which an export must never overwrite."""
    stages = ["vqvae", DECODER_STAGE, "codes", *(prior_stage(n_levels, level) for level in range(n_levels))]
    return [run / "config.json", run / "metrics.jsonl", *(run / stage for stage in stages)]


MODEL_SUFFIX = ".safetensors"


def _check_out(run: Path, out: Path, n_levels: int, force: bool) -> None:
    """Refuse ``out`` when it is one of the run's own files, or no model file's path
    (``_check_model_out``)."""
    target = out.resolve()
    for owned in _run_files(run, n_levels):
        owned = owned.resolve()
        if target == owned or owned in target.parents:
            raise FileExistsError(f"{out} is part of the run {run}: write the model file elsewhere")
    _check_model_out(out, force)


def _check_model_out(out: Path, force: bool) -> None:
    """Refuse ``out`` before any work: a name without the model files' suffix (so that ``--force`` can
    never replace an image, such as one read for calibration), a folder, a path under a file, or an
    existing file without ``force``."""
    if out.suffix.lower() != MODEL_SUFFIX:
        raise ValueError(f"{out}: a model file's name ends in {MODEL_SUFFIX}")
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder: give the model file's path")
    if any(parent.exists() and not parent.is_dir() for parent in out.parents):
        raise NotADirectoryError(f"{out}: {next(p for p in out.parents if p.exists())} is not a folder")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists (use --force to overwrite it)")


def _check_codes(run: Path, stage: str, path: Path, vqvae_sha256: str, vqvae_step: int) -> None:
    """Refuse a prior trained on the codes of another VQ-VAE checkpoint than the run's current one."""
    state = read_state(path)
    source = state["meta"].get("codes_source") or {}
    trained_on = source.get("vqvae_sha256")
    level = stage.removeprefix("prior-")
    if trained_on is None:  # not written by train prior: nothing to check against
        say(f"Warning: {path} does not record which VQ-VAE's codes it was trained on; not checked")
    elif trained_on != vqvae_sha256:
        step = source.get("vqvae_step")
        raise ValueError(
            f"the {level} prior was trained on the codes of another VQ-VAE"
            + (f" (step {step})" if step is not None else "")
            + f" than the run's current {checkpoint_path(run, 'vqvae')} (step {vqvae_step}), which has"
            f" changed since: retrain the prior (vqcodec train prior --run-dir {run} --level {level}"
            f" --no-resume --steps {state['step']})"
        )


def calibrated(model: CodecModel, folder: str | Path, n: int = CALIBRATION_IMAGES) -> CodecModel:
    """``model`` with its input ranges measured on the first ``n`` images of ``folder``."""
    images = calibration_images(folder, n, model.config.vqvae.multiple)
    say(f"Measuring the integer layers' input ranges on {len(images)} images of {folder}")
    calibrate(model, images)
    return model


def calibrate_model_file(
    model_file: str | Path,
    images: str | Path,
    out: str | Path,
    n: int = CALIBRATION_IMAGES,
    half: bool = False,
    force: bool = False,
) -> str:
    """Write ``model_file`` with its input ranges measured on ``images`` to ``out``; return its SHA-256.

    The model file itself is never changed: ``out`` must be another file named ``*.safetensors`` (an
    existing one only with ``force``; its folder is made if missing), and appears only when complete."""
    source, out = Path(model_file), Path(out)
    if out.resolve() == source.resolve():
        raise FileExistsError(f"{out} is the model file read: write the calibrated model elsewhere")
    _check_model_out(out, force)
    model, _ = read_model(source)
    model = calibrated(model, images, n)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_model(model, out, half=half)


def _training_images(run: Path, vqvae_state: dict[str, Any]) -> str:
    """The folder of training images a run records: stage 1's, else the refined decoder's, else that
    of the priors' codes (a run made from a model file has only the latter two)."""
    decoder = checkpoint_path(run, DECODER_STAGE)
    found = [
        vqvae_state["meta"].get("data"),
        read_state(decoder)["meta"].get("data") if decoder.exists() else None,
        (cached_source(code_path(run, "train")) or {}).get("data"),
    ]
    for folder in found:
        if folder is not None:
            return folder
    raise ValueError(
        f"{run} records no training images: give a folder of them to measure the integer layers' input"
        " ranges on (--calibration-images)"
    )


def export(
    run: str | Path,
    out: str | Path,
    allow_untrained: bool = False,
    half: bool = False,
    force: bool = False,
    calibration: str | Path | None = None,
) -> str:
    """Write the model of ``run`` to the model file ``out``; return the file's SHA-256 (hex).

    ``half`` stores the parameters as float16, as the bundled models do. A refined decoder
    (``decoder.train_decoder``) replaces stage 1's. The integer layers' input ranges are measured on
    the first images of ``calibration``, by default the run's training images (``calibrated``), except
    where a part's checkpoint names the ranges its weights go with: those it learnt through the integer
    roundings, or a model file's for a part that ``train from-model`` copied and no stage changed.

    Every level needs a trained prior; with ``allow_untrained`` a missing one keeps its (seeded,
    so reproducible) random initialisation, which is only useful for testing the plumbing. A
    trained prior must have been trained on the codes of the run's current VQ-VAE checkpoint
    (ValueError otherwise: the VQ-VAE was trained further after the prior).

    ``out`` must be named ``*.safetensors`` (ValueError); an existing one is replaced only with
    ``force``, and never when it is one of the run's own files (FileExistsError). The file is written
    to a temporary file beside ``out`` and renamed over it at the end, so an error never leaves a
    partial model file.
    """
    run, out = Path(run), Path(out)
    config = read_config(run)
    n_levels = config.vqvae.n_levels
    _check_out(run, out, n_levels, force)
    vqvae = checkpoint_path(run, "vqvae")
    if not vqvae.exists():
        raise FileNotFoundError(
            f"no stage-1 checkpoint at {vqvae}: train the VQ-VAE first (vqcodec train vqvae)"
        )
    vqvae_state = read_state(vqvae)
    vqvae_sha256, vqvae_step = file_sha256(vqvae), vqvae_state["step"]
    calibration = calibration or _training_images(run, vqvae_state)
    trained = {}
    for level in range(n_levels):
        stage = prior_stage(n_levels, level)
        path = checkpoint_path(run, stage)
        if path.exists():
            _check_codes(run, stage, path, vqvae_sha256, vqvae_step)
            trained[level] = path
        elif allow_untrained:
            say(f"Warning: no trained prior at {path}; exporting an untrained {stage}")
        else:
            raise FileNotFoundError(
                f"no trained prior at {path}: train it (vqcodec train prior --run-dir {run} "
                f"--level {level_names(n_levels)[level]}) or allow untrained priors"
            )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CodecModel(config)
    load_weights(model.vqvae, read_model_state(vqvae), vqvae)
    refined = refined_decoder(run, vqvae_sha256)
    if refined is not None:
        say(f"The decoder is {checkpoint_path(run, DECODER_STAGE)}'s (vqcodec train decoder)")
        load_weights(
            model.vqvae, {**model.vqvae.state_dict(), **refined[0]}, checkpoint_path(run, DECODER_STAGE)
        )
    for level, path in trained.items():
        load_weights(model.priors[level], read_model_state(path), path)
    calibrated(model.eval(), calibration)
    kept = {
        f"priors.{level}.": read_state(path)["meta"].get("input_ranges") for level, path in trained.items()
    }
    kept["vqvae."] = refined[1] if refined is not None else vqvae_state["meta"].get("input_ranges")
    for prefix, ranges in kept.items():  # the ranges a part's weights learnt or came with, not new ones
        model.input_ranges.update({f"{prefix}{name}": value for name, value in (ranges or {}).items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_model(model, out, half=half)
