"""Errors a decoder raises on a bad ``.vqz`` file.

Every problem with a file's *content* is a :class:`VQZError`, so a caller can catch one type and
print its one-line message; misuse of the API by the caller (wrong array shapes, say) stays a
``ValueError``.
"""

from __future__ import annotations


class VQZError(Exception):
    """Base class: the file cannot be decoded."""


class FormatError(VQZError):
    """The bytes do not follow the format: bad signature, truncated, field out of range, bad CRC."""


class UnsupportedVersionError(VQZError):
    """The file needs a newer decoder: a newer major version, or an unknown critical chunk."""


class CorruptDataError(VQZError):
    """The entropy-coded payload or the decoded codes are inconsistent (code checksum mismatch)."""


class ModelMismatchError(VQZError):
    """The file was written with another model, or its code-map shapes do not fit this model."""


class ImageTooLargeError(VQZError):
    """The declared image exceeds the decoder's limits (checked before anything is allocated)."""
