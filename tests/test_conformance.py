"""The conformance vectors decode to the listed codes and pixels, or fail with the listed error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import ExifTags

from vqcodec import errors
from vqcodec.codec import Codec

VECTORS = Path(__file__).resolve().parents[1] / "bitstream_spec/vectors"
MANIFEST = json.loads((VECTORS / "vectors.json").read_text())


@pytest.fixture(scope="module")
def codec() -> Codec:
    model = VECTORS / MANIFEST["model"]["file"]
    assert hashlib.sha256(model.read_bytes()).hexdigest() == MANIFEST["model"]["sha256"]
    return Codec.open(model)


@pytest.mark.parametrize("vector", MANIFEST["vectors"], ids=lambda v: v["file"])
def test_vector(codec: Codec, vector: dict):
    data = (VECTORS / vector["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == vector["sha256"]
    if "error" in vector:
        with pytest.raises(getattr(errors, vector["error"])):
            codec.decompress(data)
        return
    decoded = codec.decode_codes(data)
    assert [list(level.shape) for level in decoded.codes] == vector["code_shapes"]
    codes = b"".join(level.astype("<u2").tobytes() for level in decoded.codes)
    assert hashlib.sha256(codes).hexdigest() == vector["codes_sha256"]
    image = codec.render(decoded)
    assert (image.width, image.height, image.mode) == (vector["width"], vector["height"], vector["mode"])
    assert [decoded.file.coded_width, decoded.file.coded_height] == vector["coded_size"]
    assert len(image.info.get("icc_profile", b"")) == vector["icc_bytes"]
    assert len(decoded.file.exif or b"") == vector["exif_bytes"]
    assert len(decoded.file.xmp or b"") == len(image.info.get("xmp", b"")) == vector["xmp_bytes"]
    if vector["exif_bytes"]:  # Pillow's info["exif"] has JPEG's Exif\0\0 before the chunk (spec §5.3)
        assert image.info["exif"] == b"Exif\0\0" + decoded.file.exif
    tags = vector.get("exif_tags", {})
    assert {name: image.getexif().get(ExifTags.Base[name]) for name in tags} == tags
    assert hashlib.sha256(image.tobytes()).hexdigest() == vector["pixels_sha256"]  # exact.md §10
