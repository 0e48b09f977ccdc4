"""Bundled models: the model files ``vqcodec/zoo/NAME.safetensors``, found by name or by model id.

A file's name without the extension is the model's name; ``default`` is the model used when none is
named. An optional ``NAME.json`` beside it may give a ``"description"``. Model files are hashed and
loaded at most once per process (per file version and device), since both are slow for large models.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vqcodec.errors import ModelFileError

if TYPE_CHECKING:  # torch is imported only to load a model: listing and finding models need none
    import torch

    from vqcodec.models.model import CodecModel

ZOO_DIR = Path(__file__).resolve().parent
"""Where the bundled model files live (read at every call, so tests may point it elsewhere)."""

DEFAULT_MODEL = "default"
SUFFIX = ".safetensors"
_MODEL_CACHE_SIZE = 4
"""Loaded models kept per process: enough for a few models or devices, bounded in memory."""


RETIRED_MODELS = {
    "3bf23882ac1e05eece91ecb866364f65": "0.2.0",
    "bde513d03c1c7529b500e8438c5d2076": "0.2.1",
}
"""Model ids (hex) of default models this version no longer bundles, with the vqcodec version that did:
a file that needs one gets that version's name, not just the id."""


class UnknownModelError(ModelFileError):
    """No bundled model has the requested name or id, and no model file exists at the given path."""


@dataclass(frozen=True)
class ModelInfo:
    """A bundled model as ``vqcodec models`` lists it."""

    name: str
    sha256: str
    """SHA-256 (hex) of the model file; its first 16 bytes are the model id in ``.vqz`` headers."""
    path: Path
    size: int
    """File size in bytes."""
    description: str | None = None


_Version = tuple[str, int, int]
"""(resolved path, size, mtime): a file changed in place is hashed and loaded again."""

_digests: dict[_Version, str] = {}
_models: OrderedDict[tuple[_Version, str], tuple[CodecModel, str]] = OrderedDict()


def _version(path: Path) -> _Version:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def sha256_of(path: Path) -> str:
    """The SHA-256 (hex) of a model file, computed once per version of the file (its size and mtime)."""
    key = _version(path)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def _description(path: Path) -> str | None:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        description = json.loads(sidecar.read_text(encoding="utf-8")).get("description")
    except (OSError, ValueError, AttributeError):
        return None
    return description if isinstance(description, str) else None


def list_models() -> list[ModelInfo]:
    """The bundled models, sorted by name."""
    return [
        ModelInfo(path.stem, sha256_of(path), path, path.stat().st_size, _description(path))
        for path in sorted(ZOO_DIR.glob(f"*{SUFFIX}"))
        if path.is_file()
    ]


def resolve_model(name_or_path: str | os.PathLike[str] | None = None) -> Path:
    """The model file for a bundled model's name or a path to a model file; None means the default.

    A name of a bundled model wins over a file of the same name in the working directory.
    """
    name = DEFAULT_MODEL if name_or_path is None else os.fspath(name_or_path)
    bundled = ZOO_DIR / f"{name}{SUFFIX}"
    if os.sep not in name and "/" not in name and bundled.is_file():
        return bundled
    path = Path(name)
    if path.is_file():
        return path
    if path.exists():
        raise UnknownModelError(f"{name} is not a model file (not a regular file)")
    names = [info.name for info in list_models()]
    if name_or_path is None:
        raise UnknownModelError(
            f"no bundled default model (vqcodec/zoo/{DEFAULT_MODEL}{SUFFIX} is not installed);"
            " name a model file explicitly"
        )
    available = ", ".join(names) if names else "none"
    raise UnknownModelError(f"no model named {name!r} and no such file (bundled models: {available})")


def find_by_id(model_id16: bytes) -> ModelInfo | None:
    """The bundled model whose SHA-256 starts with the 16-byte model id of a ``.vqz`` header."""
    for info in list_models():
        if bytes.fromhex(info.sha256).startswith(model_id16):
            return info
    return None


def model_name(path: str | os.PathLike[str]) -> str | None:
    """The name of the bundled model stored at ``path``, or None for a file outside the zoo."""
    path = Path(path).resolve()
    return path.stem if path.parent == ZOO_DIR.resolve() and path.suffix == SUFFIX else None


def load_cached(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[CodecModel, str]:
    """``modelfile.read_model`` with a small per-process cache: (model in eval mode, SHA-256 hex).

    Callers share the returned model and must not modify it.
    """
    import torch

    from vqcodec.zoo.modelfile import read_model

    key = (_version(Path(path)), str(torch.device(device)))
    if key in _models:
        _models.move_to_end(key)
        return _models[key]
    loaded = read_model(path, device, bundled=model_name(path) is not None)
    _models[key] = loaded
    _digests[key[0]] = loaded[1]
    while len(_models) > _MODEL_CACHE_SIZE:
        _models.popitem(last=False)
    return loaded
