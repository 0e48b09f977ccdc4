"""Fixtures shared by the test modules: the tiny models most tests code with, built once per session.

``pytest -m "not slow"`` runs the fast tier (see README); the ``slow`` marker is registered in
pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from synthetic_images import seeded_model_file

from vqcodec.codec import Codec
from vqcodec.models.config import tiny_config
from vqcodec.models.model import CodecModel
from vqcodec.zoo.modelfile import save_model


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose codebooks a training pass seeded (``seeded_model_file``, seed 0)."""
    return seeded_model_file(tmp_path_factory.mktemp("models") / "tiny.safetensors", seed=0)


@pytest.fixture(scope="session")
def codec(model_file: Path) -> Codec:
    """The codec of ``model_file``."""
    return Codec.open(model_file)


@pytest.fixture(scope="session")
def untrained_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with torch's initial weights (seed 0): for tests of plumbing, not of codes."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("untrained") / "tiny.safetensors"
    save_model(CodecModel(tiny_config()).eval(), path)
    return path
