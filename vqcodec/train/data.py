"""Training images: random crops from a folder, drawn in a stream that is a pure function of (seed, step).

Every item is addressed by a key ``(index, seed)``: the image and the seed of its augmentation. A
``StreamSampler`` turns the training step into the keys of that step's batch, so the data stream does
not depend on worker processes, and a run resumed at step ``s`` sees exactly the batches an
uninterrupted run sees from step ``s`` on. The stream is defined for the global batch, and every rank
takes its slice of it, so it does not depend on the number of GPUs either.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from vqcodec.errors import VQZError
from vqcodec.imageio import load_image
from vqcodec.train.pack import IMAGE_SUFFIXES, iter_images

MIN_SCALE = 0.5  # random downscaling by a factor in [MIN_SCALE, 1] hides JPEG artefacts
WHOLE_RESIZE_PIXELS = 2**24  # a crop of a larger resized image resizes only its own part


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from integers and strings; the same in every process (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def list_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursively, by suffix, case-insensitive), sorted by path."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    paths = list(iter_images(root))
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    return paths


def load_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as RGB, read as the codec reads images (orientation, modes, limits)."""
    try:
        return Image.fromarray(load_image(path).rgb)
    except VQZError as e:  # its message names the file
        raise ValueError(f"cannot read an image: {e}") from e


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image as float [3, H, W] = pixel / 255 - 0.5, the models' input convention."""
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return pixels.permute(2, 0, 1).float() / 255.0 - 0.5


def random_crop(img: Image.Image, crop: int, rng: random.Random) -> Image.Image:
    """Downscale by a random factor in [MIN_SCALE, 1] (never below ``crop``), crop, maybe flip."""
    w, h = img.size
    scale = max(rng.uniform(MIN_SCALE, 1.0), crop / min(w, h))
    size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
    x, y = rng.randint(0, size[0] - crop), rng.randint(0, size[1] - crop)
    img = _resized_crop(img, size, (x, y), crop)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def centre_crop(img: Image.Image, crop: int) -> Image.Image:
    """The central ``crop`` x ``crop`` square at native scale (upscaled first if the image is smaller)."""
    w, h = img.size
    if min(w, h) < crop:
        scale = crop / min(w, h)
        w, h = max(crop, round(w * scale)), max(crop, round(h * scale))
    return _resized_crop(img, (w, h), ((w - crop) // 2, (h - crop) // 2), crop)


def _resized_crop(img: Image.Image, size: tuple[int, int], at: tuple[int, int], crop: int) -> Image.Image:
    """The ``crop`` square at ``at`` of ``img`` resized to ``size``. A resized image beyond
    ``WHOLE_RESIZE_PIXELS`` (a thin image upscaled: 2x8192 to a 256-pixel crop is 268 M pixels) is not
    made: only the square's part of ``img`` is resized, to nearly the same pixels (Pillow rounds
    between its two passes, and the box's edges change them by a level or so)."""
    x, y = at
    if size == img.size:
        return img.crop((x, y, x + crop, y + crop))
    if size[0] * size[1] <= WHOLE_RESIZE_PIXELS:
        return img.resize(size, Image.Resampling.BICUBIC).crop((x, y, x + crop, y + crop))
    sx, sy = img.size[0] / size[0], img.size[1] / size[1]
    box = (x * sx, y * sy, (x + crop) * sx, (y + crop) * sy)
    return img.resize((crop, crop), Image.Resampling.BICUBIC, box=box)


class ImageFolder(Dataset):
    """Square crops of every image under a folder, as float [3, crop, crop] = pixel / 255 - 0.5.

    An item's key is ``(index, seed)``: with ``train`` the crop is random (scale, position, flip)
    and fully determined by ``seed``; without, it is the deterministic centre crop and the seed is
    ignored.
    """

    def __init__(self, root: str | Path, crop: int, train: bool = True) -> None:
        self.root = Path(root)
        self.paths = list_images(root)
        self.crop = crop
        self.train = train
        for path in self.paths:  # now, not when a worker first draws it, maybe hours into a run
            try:
                Image.open(path).close()  # the header only
            except Image.DecompressionBombError as e:
                raise ValueError(f"cannot read an image: {path}: too large ({e})") from e
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"cannot read an image: {path}: not an image, or one Pillow cannot read"
                ) from e

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, seed = key
        img = load_rgb(self.paths[index])
        if self.train:
            return to_tensor(random_crop(img, self.crop, random.Random(seed)))
        return to_tensor(centre_crop(img, self.crop))


class StreamSampler(Sampler[list[tuple[int, int]]]):
    """Batches of keys ``(index, seed)`` for steps ``start, ..., stop - 1`` of an endless shuffled stream.

    Sample ``g`` of the stream (step ``g // batch_size``) is item ``perm_e[g % n]`` of epoch
    ``e = g // n``, where ``perm_e`` is a permutation seeded by (seed, e); its augmentation seed is
    derived from (seed, g). ``rank`` takes its ``batch_size // world_size`` consecutive samples of
    every global batch.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop = start, stop
        self.local = batch_size // world_size
        self.offset = rank * self.local
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _item(self, g: int) -> int:
        epoch = g // self.n
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=generator)
        return int(self._perm[g % self.n])

    def batch(self, step: int) -> list[tuple[int, int]]:
        """The keys of this rank's part of the batch of ``step``."""
        first = step * self.batch_size + self.offset
        return [
            (self._item(g), derive_seed(self.seed, "sample", g)) for g in range(first, first + self.local)
        ]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


CALIBRATION_IMAGES = 8
"""Images whose largest layer inputs give a model's input ranges (``exact.calibrate``). Kodak's inputs
exceed the maxima of 8 CBSD432 images by up to half, yet more images do worse: their larger ranges
round every input more coarsely, which costs more than the rare clip (``experiments/calibration_cost.py``)."""


def calibration_images(folder: str | Path, n: int, multiple: int) -> list[torch.Tensor]:
    """The first ``n`` images of ``folder`` (by path), each cut to multiples of ``multiple`` from the top
    left, as [1, 3, H, W] in the models' convention."""
    images = []
    for path in list_images(folder)[:n]:
        image = to_tensor(load_rgb(path))
        height, width = image.shape[1] // multiple * multiple, image.shape[2] // multiple * multiple
        if height and width:
            images.append(image[None, :, :height, :width])
    if not images:
        raise ValueError(f"no image in {folder} is {multiple} pixels wide and high")
    return images
