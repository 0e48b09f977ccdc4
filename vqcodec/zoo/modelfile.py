"""Model files: one ``.safetensors`` file with the weights of a CodecModel and its configuration.

The header's ``__metadata__`` is ``{"format": "vqcodec-model", "version": "2", "config": <ModelConfig
JSON>, "ranges": <JSON object>}``, the ranges being ``CodecModel.input_ranges`` (module name to an
integer in 1..2**20 - 1; version 1 files have none, so every layer takes the default range); the
tensors are the model's whole state dict (float weights and the codebooks' EMA statistics, so a
model file can also seed further training). A model file is untrusted input: it is
parsed by safetensors (no pickle, no code execution), its configuration is type- and bounds-checked,
and every tensor in the header must match, by name, dtype and shape, the model the configuration
describes, built first on the meta device. So a configuration can never make us allocate more than
the (bounded) file holds. Files are written byte-for-byte deterministically, so equal weights give
an equal SHA-256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from vqcodec.errors import ModelFileError
from vqcodec.exact.arithmetic import ACT_MAX
from vqcodec.models.config import LevelConfig, ModelConfig, PriorConfig, VQVAEConfig
from vqcodec.models.model import CodecModel

FORMAT = "vqcodec-model"
VERSION = "2"
READS = ("1", "2")
MAX_FILE_BYTES = 2 * 1024**3
MAX_HEADER_BYTES = 100 * 1024**2  # the limit safetensors itself applies
MAX_LEVELS = 4
# Bounds on the numbers in a configuration: absurd values get a clear message before anything is built.
LIMITS: dict[str, tuple[float, float]] = {
    "in_channels": (3, 3),  # the codec codes RGB pixels
    "channels": (1, 4096),
    "res_channels": (1, 4096),
    "n_res_blocks": (0, 64),
    "bottom_stride": (2, 64),
    "codebook_size": (2, 65536),
    "code_dim": (1, 4096),
    "ema_decay": (0.0, 1.0),
    "commitment_cost": (0.0, 100.0),
    "kernel_size": (3, 15),  # a masked 1x1 convolution sees no earlier code
    "n_blocks": (0, 256),
    "attention_every": (0, 256),
    "n_heads": (1, 256),
    "attention_radius": (0, 64),
    "n_out_blocks": (0, 64),
    "n_cond_blocks": (0, 64),
    "cond_channels": (1, 4096),
    "dropout": (0.0, 1.0),
}
CHOICES: dict[str, tuple[str, ...]] = {"attention_context": ("window", "raster")}


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    Readers never see a half-written file: the data is synced to disk, then renamed over the target.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _checked_fields(data: Any, cls: type, where: str) -> dict[str, Any]:
    """The scalar fields of dataclass ``cls`` in ``data``: known keys, right types, within LIMITS."""
    if not isinstance(data, dict):
        raise ModelFileError(f"{where} must be a JSON object")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ModelFileError(f"{where}: unknown keys {unknown}")
    out = {}
    for name, value in data.items():
        f = known[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, str):
            if value not in CHOICES[name]:
                choices = ", ".join(CHOICES[name])
                raise ModelFileError(f"{where}.{name} must be one of {choices}, got {value!r}")
            out[name] = value
            continue
        if not isinstance(default, (int, float)):
            continue  # nested values are checked by the caller
        if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise ModelFileError(f"{where}.{name} must be an integer, got {value!r}")
        if isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ModelFileError(f"{where}.{name} must be a finite number, got {value!r}")
            value = float(value)
        low, high = LIMITS.get(name, (-math.inf, math.inf))
        if not low <= value <= high:
            raise ModelFileError(f"{where}.{name} = {value} is out of bounds [{low}, {high}]")
        out[name] = value
    return out


def _checked_list(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list) or not 1 <= len(data) <= MAX_LEVELS:
        raise ModelFileError(f"{where} must be a list of 1 to {MAX_LEVELS} entries")
    return data


def config_from_dict(data: Any) -> ModelConfig:
    """A ModelConfig from untrusted JSON data, bounds-checked; missing keys take their defaults."""
    top = _checked_fields(data, ModelConfig, "config")
    if "vqvae" in data:
        vq = _checked_fields(data["vqvae"], VQVAEConfig, "config.vqvae")
        if "levels" in data["vqvae"]:
            levels = _checked_list(data["vqvae"]["levels"], "config.vqvae.levels")
            vq["levels"] = tuple(
                LevelConfig(**_checked_fields(lvl, LevelConfig, f"config.vqvae.levels[{i}]"))
                for i, lvl in enumerate(levels)
            )
        top["vqvae"] = VQVAEConfig(**vq)
    if "priors" in data:
        priors = _checked_list(data["priors"], "config.priors")
        top["priors"] = tuple(
            PriorConfig(**_checked_fields(p, PriorConfig, f"config.priors[{i}]"))
            for i, p in enumerate(priors)
        )
    try:
        return ModelConfig(**top)
    except ValueError as e:
        raise ModelFileError(f"config: {e}") from e


def config_from_json(text: str | bytes) -> ModelConfig:
    """A ModelConfig from untrusted JSON text (see ``config_from_dict``)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # also UnicodeDecodeError, too deep or too long a number
        raise ModelFileError(f"config is not valid JSON: {e}") from e
    return config_from_dict(data)


def expected_tensors(config: ModelConfig) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor a model of ``config`` saves, without allocating it.

    (Random initialisation on the meta device first imports parts of torch that take 1-2 s.)
    """
    try:
        with torch.device("meta"):
            model = CodecModel(config)
    except Exception as e:  # any failure to build means the (untrusted) config is inconsistent
        raise ModelFileError(f"config does not describe a buildable model: {e}") from e
    return {name: (t.dtype, tuple(t.shape)) for name, t in model.state_dict().items()}


def _header(data: bytes) -> dict[str, Any]:
    """The JSON header of safetensors bytes."""
    if len(data) < 8:
        raise ModelFileError("not a model file: too short")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, MAX_HEADER_BYTES):
        raise ModelFileError("not a model file: no valid safetensors header")
    try:
        header = json.loads(data[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"not a model file: header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise ModelFileError("not a model file: header is not a JSON object")
    return header


_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _check_tensors(header: dict[str, Any], expected: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> None:
    found = {name: entry for name, entry in header.items() if name != "__metadata__"}
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing:
        raise ModelFileError(f"model file lacks {len(missing)} tensors, e.g. {missing[:3]}")
    if extra:
        raise ModelFileError(f"model file has {len(extra)} unexpected tensors, e.g. {extra[:3]}")
    for name, (dtype, shape) in expected.items():
        entry = found[name]
        allowed = {_DTYPES[dtype], "F16"} if dtype == torch.float32 else {_DTYPES[dtype]}
        if not isinstance(entry, dict) or entry.get("dtype") not in allowed:
            raise ModelFileError(f"tensor {name}: expected dtype {_DTYPES[dtype]}, got {entry!r:.80}")
        if entry.get("shape") != list(shape):
            raise ModelFileError(f"tensor {name}: expected shape {list(shape)}, got {entry.get('shape')}")


def read_model(
    path_or_bytes: str | os.PathLike[str] | bytes, device: str | torch.device = "cpu", bundled: bool = False
) -> tuple[CodecModel, str]:
    """A CodecModel (eval mode, on ``device``) and the SHA-256 (hex) of the file's bytes.

    Raises ModelFileError (a ValueError) for anything but a well-formed model file. Before building
    the model, the tensors the file declares are checked against those of a copy built on the meta
    device, so that a stranger's configuration cannot make us allocate more than the file holds; a
    ``bundled`` file (shipped with the package, as trusted as its code) skips that check, whose first
    use imports parts of torch for 1-2 s; ``load_state_dict`` still checks its names and shapes.
    """
    if isinstance(path_or_bytes, bytes):
        data = path_or_bytes
    else:
        if os.path.getsize(path_or_bytes) > MAX_FILE_BYTES:
            raise ModelFileError(f"{path_or_bytes} is larger than {MAX_FILE_BYTES} bytes: not a model file")
        data = Path(path_or_bytes).read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise ModelFileError(f"larger than {MAX_FILE_BYTES} bytes: not a model file")
    sha256 = hashlib.sha256(data).hexdigest()

    header = _header(data)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not {"format", "version", "config"} <= set(meta):
        raise ModelFileError("not a vqcodec model file: metadata must hold format, version and config")
    if not all(isinstance(value, str) for value in meta.values()):
        raise ModelFileError("not a vqcodec model file: metadata values must be strings (safetensors)")
    if meta["format"] != FORMAT:
        raise ModelFileError(f"not a vqcodec model file: format is {meta['format']!r:.40}, not {FORMAT!r}")
    if meta["version"] not in READS:
        raise ModelFileError(f"unsupported model file version {meta['version']!r:.20} (this reads 1 and 2)")
    keys = {"format", "version", "config"} | ({"ranges"} if meta["version"] == "2" else set())
    if set(meta) != keys:
        raise ModelFileError(
            f"model file version {meta['version']}: metadata must hold exactly {sorted(keys)}"
        )
    config = config_from_json(meta["config"])
    if not bundled:
        _check_tensors(header, expected_tensors(config))

    try:
        tensors = safetensors.torch.load(data)
    except safetensors.SafetensorError as e:
        raise ModelFileError(f"corrupted model file: {e}") from e
    with torch.random.fork_rng(devices=[]):  # building draws a random init; leave the caller's RNG alone
        model = CodecModel(config)
    # float16 weights widen exactly to float32, so the exact priors see the same numbers everywhere
    state = {name: t.float() if t.dtype == torch.float16 else t for name, t in tensors.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # only a bundled file reaches this unchecked
        raise ModelFileError(f"tensors do not match the configuration: {e}") from e
    model.input_ranges = _checked_ranges(meta.get("ranges", "{}"), model)
    return model.to(device).eval(), sha256


def _checked_ranges(text: str, model: CodecModel) -> dict[str, int]:
    """The input ranges of untrusted JSON text: each names a convolution of ``model``, an integer in
    1..ACT_MAX."""
    try:
        ranges = json.loads(text)
    except (ValueError, RecursionError, TypeError) as e:  # as in config_from_json
        raise ModelFileError(f"ranges are not valid JSON: {e}") from e
    if not isinstance(ranges, dict):
        raise ModelFileError("ranges must be a JSON object")
    convs = {
        name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    }
    for name, value in ranges.items():
        if name not in convs:
            raise ModelFileError(f"ranges name {name!r:.80}, which is no convolution of the model")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ACT_MAX:
            raise ModelFileError(f"range of {name} must be an integer in 1..{ACT_MAX}, got {value!r:.40}")
    return dict(sorted(ranges.items()))


def _canonical(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[bytes, memoryview]:
    """Safetensors bytes as (length + header, data) with a sorted header: the same bytes in every process.

    (safetensors writes ``__metadata__`` in hash-map order, which changes from run to run.)
    """
    raw = safetensors.torch.save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # keep the data 8-byte aligned, as safetensors does
    return len(header).to_bytes(8, "little") + header, memoryview(raw)[8 + n :]


def save_model(model: CodecModel, path: str | Path, half: bool = False) -> str:
    """Write ``model`` as a model file (atomically) and return the SHA-256 (hex) of the file.

    ``half`` stores the parameters as float16 (half the size, for the bundled models); buffers such
    as the codebooks stay float32.
    """
    tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in model.state_dict().items()}
    if half:
        for name, _ in model.named_parameters():
            tensors[name] = tensors[name].half()
            if not torch.isfinite(tensors[name]).all():
                raise ModelFileError(f"parameter {name} does not fit in float16")
    ranges = json.dumps(model.input_ranges, sort_keys=True, separators=(",", ":"))
    metadata = {"format": FORMAT, "version": VERSION, "config": model.config.to_json(), "ranges": ranges}
    head, body = _canonical(tensors, metadata)
    if len(head) + len(body) > MAX_FILE_BYTES:
        raise ModelFileError(f"model too large for a model file ({len(head) + len(body)} bytes)")
    sha256 = hashlib.sha256(head)
    sha256.update(body)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(head)
        f.write(body)
    return sha256.hexdigest()
