"""Regenerate the conformance vectors: the tiny model, the ``.vqz`` files and ``vectors.json``.

    python bitstream_spec/vectors/make_vectors.py [--keep-model]

The model is random (seeded), so the vectors exercise the format, not compression quality. Its
codebooks are seeded from synthetic images so that the code maps use many codes. A new model is
deterministic on one platform only (float arithmetic in the seeding pass); ``--keep-model`` codes
the files with the committed ``tiny.safetensors`` instead, and then every platform writes the same
files, since the encoder is exact (exact.md §11): to add a vector without changing the others.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageCms

from vqcodec.codec import Codec, Decoded
from vqcodec.coding.container import MAX_CHUNK_BYTES, VQZFile, varint
from vqcodec.coding.order import DEFAULT_TILE
from vqcodec.errors import VQZError
from vqcodec.exact.calibrate import calibrate
from vqcodec.models.config import tiny_config
from vqcodec.models.model import CodecModel
from vqcodec.quality import DEFAULT_QUALITY
from vqcodec.zoo.modelfile import save_model

HERE = Path(__file__).resolve().parent
MODEL = "tiny.safetensors"
SEED = 0
QUALITY = {"resampled_37x23": 1}
"""``--quality`` of the valid vectors that are not coded at the default quality."""
TILE = {"tiled_97x71": 64}
"""``--tile`` of the valid vectors cut into tiles (the default tile is larger than every vector)."""
EXIF_TAGS = {"Make": "vqcodec", "DateTime": "2024:01:02 03:04:05", "Copyright": "CC0", "Orientation": 6}
"""The EXIF of ``meta_16x12``'s source, a 12 x 16 image to be turned (6: 90 degrees clockwise)."""
XMP = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"'
    b' xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6">'
    b"<dc:rights>CC0</dc:rights></rdf:Description></rdf:RDF></x:xmpmeta>"
    b'<?xpacket end="w"?>'
)
"""The XMP packet of ``meta_16x12``'s source, with the same orientation."""


def tiny_model(seed: int = SEED) -> CodecModel:
    """The tiny model, randomly initialised; one training-mode pass seeds the codebooks from data, and
    its layers' input ranges are measured on the same images."""
    torch.manual_seed(seed)
    model = CodecModel(tiny_config())
    images = torch.stack([torch.from_numpy(smooth(64, 64, seed + i)).permute(2, 0, 1) for i in range(8)])
    images = images.float() / 255.0 - 0.5
    model.vqvae.train()
    with torch.no_grad():
        model.vqvae(images)
    calibrate(model, list(images[:, None]))
    return model.eval()


def smooth(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth synthetic uint8 [H, W, 3] image: random gradients and gentle waves."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / 32.0
    a, b, c, d = rng.uniform(0.2, 1.0, (4, 3, 1, 1))
    planes = 0.5 + 0.25 * np.sin(a * x + b * y + c * 6.0) + 0.2 * np.cos(d * x * y / 4.0)
    return (np.clip(planes, 0.0, 1.0) * 255.0).round().astype(np.uint8).transpose(1, 2, 0)


def code_digest(codes: list[np.ndarray]) -> str:
    """SHA-256 of the code maps as the code checksum serialises them: top first, row-major, u16 LE."""
    return hashlib.sha256(b"".join(level.astype("<u2").tobytes() for level in codes)).hexdigest()


def valid_images() -> dict[str, Image.Image]:
    """The images behind the valid vectors, by file stem."""
    rgba = np.dstack([smooth(20, 12, 4), np.linspace(0, 255, 20 * 12).reshape(12, 20).astype(np.uint8)])
    gray_alpha = np.dstack([smooth(9, 11, 5)[..., 0], (smooth(9, 11, 6)[..., 1] // 2)])
    icc = Image.fromarray(smooth(16, 16, 7))
    icc.info["icc_profile"] = srgb_profile()
    meta = Image.fromarray(smooth(12, 16, 10))
    exif = Image.Exif()
    for name, value in EXIF_TAGS.items():
        exif[ExifTags.Base[name]] = value
    meta.info.update(exif=exif.tobytes(), xmp=XMP)
    return {
        "rgb_1x1": Image.fromarray(smooth(1, 1, 0)),
        "rgb_7x13": Image.fromarray(smooth(7, 13, 1)),
        "rgb_33x17": Image.fromarray(smooth(33, 17, 2)),
        "gray_24x16": Image.fromarray(smooth(24, 16, 3)[..., 0]),
        "rgba_20x12": Image.fromarray(rgba),
        "la_9x11": Image.fromarray(gray_alpha, "LA"),
        "icc_16x16": icc,
        "resampled_37x23": Image.fromarray(smooth(37, 23, 8)),
        "tiled_97x71": Image.fromarray(smooth(97, 71, 9)),
        "meta_16x12": meta,
    }


def srgb_profile() -> bytes:
    """LittleCMS's sRGB profile with a fixed creation date and no profile id, so the bytes are stable."""
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[24:36] = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)  # dateTimeNumber
    profile[84:100] = bytes(16)  # profile id 0: "not computed"
    return bytes(profile)


def header_length(data: bytes) -> int:
    """Bytes up to and including the header CRC (found as the first CRC that matches)."""
    for end in range(32, len(data) - 3):
        if zlib.crc32(data[: end - 4]) == struct.unpack("<I", data[end - 4 : end])[0]:
            return end
    raise ValueError("no header CRC found")


def with_crcs(data: bytearray, header_end: int) -> bytes:
    """``data`` with both CRCs recomputed, so that a change reaches the checks behind them."""
    data[header_end - 4 : header_end] = struct.pack("<I", zlib.crc32(data[: header_end - 4]))
    data[-4:] = struct.pack("<I", zlib.crc32(data[header_end:-4]))
    return bytes(data)


def invalid_files(valid: bytes) -> dict[str, tuple[bytes, str, str]]:
    """Damaged variants of a plain RGB file: stem -> (bytes, expected error class, what is wrong)."""
    end = header_length(valid)
    payload = VQZFile.from_bytes(valid).payload
    # code_crc (u32) comes before n_chunks (1 byte here: no chunks), payload_len and the header CRC
    code_crc_at = end - 4 - len(varint(len(payload))) - 1 - 4
    damaged = {
        "corrupt_payload": (len(valid) - 4 - len(payload) + 5, 0x10),
        "bad_code_checksum": (code_crc_at, 0x01),
        "unknown_model": (4, 0xFF),
        "version_1": (3, 0x20 ^ 0x10),
        "version_3": (3, 0x20 ^ 0x30),
    }
    files = {}
    for stem, (at, mask) in damaged.items():
        data = bytearray(valid)
        data[at] ^= mask
        files[stem] = with_crcs(data, end)
    return {
        "corrupt_payload": (
            files["corrupt_payload"],
            "CorruptDataError",
            "a payload bit flipped, CRCs recomputed: the range decoder or the code checksum must catch it",
        ),
        "bad_code_checksum": (
            files["bad_code_checksum"],
            "CorruptDataError",
            "code_crc changed, header CRC recomputed: the decoded codes do not match it",
        ),
        "unknown_model": (files["unknown_model"], "ModelMismatchError", "the model id of another model"),
        "version_1": (files["version_1"], "UnsupportedVersionError", "format version 1.0 (vqcodec 0.1)"),
        "version_3": (files["version_3"], "UnsupportedVersionError", "format version 3.0"),
        "bad_body_crc": (valid[:-1] + bytes([valid[-1] ^ 0x01]), "FormatError", "body CRC damaged"),
        "truncated": (valid[: len(valid) // 2], "FormatError", "the file cut in half"),
        "bad_signature": (b"VQX" + valid[3:], "FormatError", "signature VQX instead of VQZ"),
        "huge_image": (huge_header(valid), "ImageTooLargeError", "declares a 1000000 x 1000000 image"),
    }


def spelled(data: bytes, **fields: object) -> bytes:
    """The file ``data`` written again field by field as vqz.md lays them out (§4-§6), with ``fields``
    replacing its own: the writer refuses what these files need. Fields (bytes where a varint may be
    spelled out): version (u8), width_m1 / height_m1 / n_chunks (bytes), image (u8), levels ((h, w)
    pairs), coder, precision (u8), chunks ((type, data) pairs), payload (bytes), header_crc_xor (u32),
    trailing (bytes after the body CRC)."""
    file = VQZFile.from_bytes(data)
    f: dict = {
        "version": 0x20,
        "width_m1": varint(file.width - 1),
        "height_m1": varint(file.height - 1),
        "image": file.colour | file.padding << 2,
        "levels": file.level_shapes,
        "coder": file.coder,
        "precision": file.precision,
        "chunks": [(chunk.type, chunk.data) for chunk in file.chunks()],
        "payload": file.payload,
        "header_crc_xor": 0,
        "trailing": b"",
    }
    unknown = set(fields) - set(f) - {"n_chunks"}
    assert not unknown, f"unknown fields {unknown}"
    f.update(fields)
    header = b"VQZ" + bytes((f["version"],)) + file.model_id + f["width_m1"] + f["height_m1"]
    header += bytes((f["image"], len(f["levels"])))
    header += b"".join(varint(h - 1) + varint(w - 1) for h, w in f["levels"])
    header += bytes((f["coder"], f["precision"])) + struct.pack("<I", file.code_crc)
    header += fields.get("n_chunks", varint(len(f["chunks"]))) + varint(len(f["payload"]))
    header += struct.pack("<I", zlib.crc32(header) ^ f["header_crc_xor"])
    body = b"".join(bytes((t,)) + varint(len(d)) + d for t, d in f["chunks"]) + f["payload"]
    return header + body + struct.pack("<I", zlib.crc32(body)) + f["trailing"]


def spelled_vectors() -> tuple[dict[str, tuple[bytes, str, str]], dict[str, tuple[bytes, str]]]:
    """Files spelled from the valid vectors for the checks of vqz.md §10 that the other invalid files
    leave out (stem -> (bytes, error class, what is wrong)), and valid ones a decoder must read as
    their source (stem -> (bytes, what is unusual))."""
    plain, rgba, resampled, tiled, icc, meta = (
        (HERE / f"{stem}.vqz").read_bytes()
        for stem in ("rgb_33x17", "rgba_20x12", "resampled_37x23", "tiled_97x71", "icc_16x16", "meta_16x12")
    )

    def chunks(data: bytes) -> list[tuple[int, bytes]]:
        return [(chunk.type, chunk.data) for chunk in VQZFile.from_bytes(data).chunks()]

    base = VQZFile.from_bytes(plain)
    image_byte = base.colour | base.padding << 2
    width_m1 = varint(base.width - 1)
    assert len(width_m1) == 1 and not chunks(plain)
    exif, xmp = chunks(meta)
    resample = chunks(resampled)[0]
    invalid = {
        "bad_header_crc": (spelled(plain, header_crc_xor=1), "FormatError", "header CRC damaged"),
        "trailing_byte": (spelled(plain, trailing=b"\0"), "FormatError", "a byte after the body CRC"),
        "overlong_varint": (
            spelled(plain, width_m1=bytes((width_m1[0] | 0x80, 0))),
            "FormatError",
            "width_m1 spelled in two bytes, not its shortest form",
        ),
        "six_byte_varint": (
            spelled(plain, n_chunks=b"\x80" * 5 + b"\0"),
            "FormatError",
            "n_chunks spelled in 6 bytes (at most 5)",
        ),
        "reserved_bits": (spelled(plain, image=image_byte | 0x10), "FormatError", "image byte bit 4 set"),
        "padding_3": (spelled(plain, image=image_byte | 3 << 2), "FormatError", "padding mode 3"),
        "no_levels": (spelled(plain, levels=()), "FormatError", "n_levels 0"),
        "nine_levels": (spelled(plain, levels=((1, 1),) * 9), "FormatError", "n_levels 9 (at most 8)"),
        "bad_coder": (spelled(plain, coder=2), "FormatError", "entropy coder 2 (only 1 is defined)"),
        "bad_precision": (spelled(plain, precision=16), "FormatError", "precision 16 (only 24)"),
        "odd_payload": (
            spelled(plain, payload=base.payload + bytes(2)),
            "FormatError",
            "payload_len not a multiple of 4",
        ),
        "unknown_critical": (
            spelled(plain, chunks=[(0x04, b"")]),
            "UnsupportedVersionError",
            "an unknown critical chunk (type 0x04)",
        ),
        "duplicate_icc": (
            spelled(icc, chunks=chunks(icc) * 2),
            "FormatError",
            "two ICC chunks",
        ),
        "missing_alpha": (
            spelled(rgba, chunks=[]),
            "FormatError",
            "colour mode RGBA without an ALPHA chunk",
        ),
        "alpha_in_rgb": (
            spelled(plain, chunks=[(0x01, zlib.compress(bytes(33 * 17)))]),
            "FormatError",
            "an ALPHA chunk in an RGB file",
        ),
        "short_alpha": (
            spelled(rgba, chunks=[(0x01, zlib.compress(bytes(20 * 12 - 1)))]),
            "FormatError",
            "an ALPHA chunk one byte short of width x height",
        ),
        "resample_extra": (
            spelled(resampled, chunks=[(resample[0], resample[1] + b"\0")]),
            "FormatError",
            "a RESAMPLE chunk with a byte after its two varints",
        ),
        "small_tiles": (
            spelled(tiled, chunks=[(0x03, varint(24 - 1) + varint(24 - 1))]),
            "FormatError",
            "a TILES chunk of 24 x 24 tiles (each side at least 32 or the image's)",
        ),
        "empty_icc": (spelled(plain, chunks=[(0x81, b"")]), "FormatError", "an empty ICC chunk"),
        "empty_xmp": (spelled(meta, chunks=[exif, (0x83, b"")]), "FormatError", "an empty XMP chunk"),
        "exif_prefix": (
            spelled(meta, chunks=[(0x82, b"Exif\0\0" + exif[1]), xmp]),
            "FormatError",
            "an EXIF chunk with JPEG's Exif\\0\\0 prefix",
        ),
    }
    valid = {
        "ancillary_33x17": (
            spelled(plain, chunks=[(0xF0, b"an unknown ancillary chunk")]),
            "rgb_33x17 with an unknown ancillary chunk (type 0xF0), to skip",
        ),
        "minor_33x17": (spelled(plain, version=0x2A), "rgb_33x17 as format version 2.10"),
        "reordered_16x12": (
            spelled(meta, chunks=[xmp, exif]),
            "meta_16x12 with its XMP chunk before its EXIF",
        ),
    }
    return invalid, valid


def bad_resample(resampled: bytes) -> bytes:
    """``resampled`` with its RESAMPLE chunk claiming a coded width one larger than the image's."""
    file = VQZFile.from_bytes(resampled)
    chunk = bytes((0x02,)) + varint(len(varint(file.coded_width - 1) + varint(file.coded_height - 1)))
    data = varint(file.coded_width - 1) + varint(file.coded_height - 1)
    at = resampled.index(chunk + data)
    wider = varint(file.width) + varint(file.coded_height - 1)
    assert len(wider) == len(data), "the damaged chunk must keep its length"
    damaged = resampled[:at] + chunk + wider + resampled[at + len(chunk) + len(data) :]
    return with_crcs(bytearray(damaged), header_length(resampled))


def bad_tiles(tiled: bytes) -> bytes:
    """``tiled`` with its TILES chunk giving tiles 68 pixels wide, not a multiple of the model's 8."""
    width, height = VQZFile.from_bytes(tiled).tile
    chunk = bytes((0x03, 2))
    at = tiled.index(chunk + varint(width - 1) + varint(height - 1))
    damaged = tiled[:at] + chunk + varint(68 - 1) + varint(height - 1) + tiled[at + len(chunk) + 2 :]
    return with_crcs(bytearray(damaged), header_length(tiled))


def huge_header(valid: bytes) -> bytes:
    """The header of ``valid`` declaring a 10^6 x 10^6 image (varints rewritten), with valid CRCs."""
    end = header_length(valid)
    reader = io.BytesIO(valid[20:])
    for _ in range(2):  # skip width_m1 and height_m1
        while reader.read(1)[0] & 0x80:
            pass
    rest = valid[20 + reader.tell() : end - 4]
    header = valid[:20] + varint(10**6 - 1) * 2 + rest
    return header + struct.pack("<I", zlib.crc32(header)) + valid[end:]


def over_the_limits(valid: bytes) -> dict[str, bytes]:
    """``valid`` with its header declaring sizes beyond the limits of section 3 (valid CRCs): a payload
    longer than its codes can take, 65 chunks, and a chunk of MAX_CHUNK_BYTES + 1 bytes (the file ends
    after its length: the limit must be checked before the chunk is read)."""
    file = VQZFile.from_bytes(valid)
    end = header_length(valid)
    payload_len = varint(len(file.payload))
    n_chunks_at = end - 4 - len(payload_len) - 1  # no chunks: one byte
    assert valid[n_chunks_at : end - 4] == varint(0) + payload_len

    def header(n_chunks: int, length: int) -> bytes:
        fields = valid[:n_chunks_at] + varint(n_chunks) + varint(length)
        return fields + struct.pack("<I", zlib.crc32(fields))

    n_codes = sum(h * w for h, w in file.level_shapes)
    return {
        "long_payload": header(0, 4 * n_codes + 68) + valid[end:],
        "many_chunks": header(65, len(file.payload)) + valid[end:],
        "long_chunk": header(1, len(file.payload)) + bytes((0xF0,)) + varint(MAX_CHUNK_BYTES + 1),
    }


def valid_vector(codec: Codec, stem: str, image: Image.Image) -> dict:
    """Code ``image`` into ``{stem}.vqz`` and describe what a decoder must get back from it."""
    data = codec.compress(
        image, quality=QUALITY.get(stem, DEFAULT_QUALITY), tile=TILE.get(stem, DEFAULT_TILE)
    )
    return described(codec, stem, data)


def described(codec: Codec, stem: str, data: bytes) -> dict:
    """Write ``data`` to ``{stem}.vqz`` and describe what a decoder must get back from it."""
    decoded: Decoded = codec.decode_codes(data)
    pixels = codec.render(decoded)
    (HERE / f"{stem}.vqz").write_bytes(data)
    metadata = {}
    if decoded.file.exif is not None:
        tags = pixels.getexif()
        metadata = {"exif_tags": {name: tags[ExifTags.Base[name]] for name in EXIF_TAGS}}
    return {
        "file": f"{stem}.vqz",
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": pixels.width,
        "height": pixels.height,
        "coded_size": [decoded.file.coded_width, decoded.file.coded_height],
        "mode": pixels.mode,
        "icc_bytes": len(decoded.file.icc or b""),
        "exif_bytes": len(decoded.file.exif or b""),
        "xmp_bytes": len(decoded.file.xmp or b""),
        "code_shapes": [list(level.shape) for level in decoded.codes],
        "codes_sha256": code_digest(decoded.codes),
        "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
        **metadata,
    }


def invalid_vectors(codec: Codec) -> list[dict]:
    """Write the invalid files (derived from the valid ones) after checking that each fails as noted."""
    valid = (HERE / "rgb_33x17.vqz").read_bytes()
    invalid = invalid_files(valid)
    invalid["bad_resample"] = (
        bad_resample((HERE / "resampled_37x23.vqz").read_bytes()),
        "FormatError",
        "a RESAMPLE chunk whose coded width exceeds the image's",
    )
    invalid["bad_tiles"] = (
        bad_tiles((HERE / "tiled_97x71.vqz").read_bytes()),
        "ModelMismatchError",
        "a TILES chunk of tiles 68 pixels wide, not a multiple of the model's 8",
    )
    limits = over_the_limits(valid)
    invalid["long_payload"] = (limits["long_payload"], "FormatError", "payload_len over 4 bytes a code + 64")
    invalid["many_chunks"] = (limits["many_chunks"], "FormatError", "n_chunks 65, over MAX_CHUNKS")
    invalid["long_chunk"] = (
        limits["long_chunk"],
        "FormatError",
        "a chunk declaring MAX_CHUNK_BYTES + 1 bytes, the file ending after its length",
    )
    invalid.update(spelled_vectors()[0])
    vectors = []
    for stem, (data, error, note) in invalid.items():
        try:
            codec.decompress(data)
        except VQZError as e:
            if type(e).__name__ != error:
                raise AssertionError(f"{stem}: expected {error}, got {type(e).__name__}: {e}") from e
        else:
            raise AssertionError(f"{stem}: decoded without an error")
        (HERE / f"{stem}.vqz").write_bytes(data)
        vectors.append(
            {"file": f"{stem}.vqz", "sha256": hashlib.sha256(data).hexdigest(), "error": error, "note": note}
        )
    return vectors


def main(keep_model: bool) -> None:
    if keep_model:
        sha256 = hashlib.sha256((HERE / MODEL).read_bytes()).hexdigest()
    else:
        sha256 = save_model(tiny_model(), HERE / MODEL)
    codec = Codec.open(HERE / MODEL)
    vectors = [valid_vector(codec, stem, image) for stem, image in valid_images().items()]
    vectors += [
        described(codec, stem, data) | {"note": note} for stem, (data, note) in spelled_vectors()[1].items()
    ]
    vectors += invalid_vectors(codec)
    manifest = {
        "format": "vqz 2.0",
        "model": {"file": MODEL, "sha256": sha256, "config": "tiny_config(), random weights, seed 0"},
        "codes_sha256": "SHA-256 of the decoded code maps: levels top first, row-major, each code u16 LE",
        "pixels_sha256": "SHA-256 of the decoded image's raw bytes in its mode (every platform)",
        "vectors": vectors,
    }
    (HERE / "vectors.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(vectors)} vectors and {MODEL} ({sha256}) to {HERE}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Regenerate the conformance vectors.")
    parser.add_argument("--keep-model", action="store_true", help="code with the committed tiny.safetensors")
    main(parser.parse_args().keep_model)
