"""Errors a decoder raises on a bad ``.vqz`` file, and on a model file it cannot use.

Every problem with a file's *content* is a :class:`VQZError`, so a caller can catch one type and
print its one-line message; misuse of the API by the caller (wrong array shapes, say) stays a
``ValueError``.

``VQZError`` is an ``OSError``, as Pillow's ``UnidentifiedImageError`` and decoding errors are: code
that catches ``OSError`` around ``Image.open(...)`` and ``load()`` catches a bad ``.vqz`` file too.
It is raised with one message argument, so its ``errno``, ``strerror`` and ``filename`` are None and
``str(error)`` is the message.
"""

from __future__ import annotations


class VQZError(OSError):
    """Base class: the file cannot be decoded (an ``OSError``, as Pillow's decoding errors)."""


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


class ModelFileError(ValueError):
    """A model file (or a configuration) that is malformed, inconsistent or out of bounds.

    Not a ``VQZError``: the ``.vqz`` file may be fine, it is the model that cannot be used. Defined here,
    away from the loader, so that finding bundled models needs no torch.
    """
