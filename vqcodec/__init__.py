"""vqcodec: a learned lossy image codec built on VQ-VAE-2 and PixelSNAIL priors.

    import vqcodec
    data = vqcodec.compress("photo.png")            # .vqz bytes, with the bundled default model
    small = vqcodec.compress("photo.png", quality=1)  # a smaller file: qualities 0 to 4, 4 the default
    fit = vqcodec.compress_result("photo.png", target_size=20_000)  # .data, and the .quality it took
    image = vqcodec.decompress(data)                # a PIL image (the bundled model the file names)
    image = vqcodec.decompress("photo.vqz")         # a path (a str is a path; bytes are data) or a file
    images = vqcodec.decompress_many([a, b, c])     # several files: same-size ones decode together
    vqcodec.info("photo.vqz")                       # geometry, model, levels, sizes: the header only
    vqcodec.info("photo.vqz", bits=True)            # also the bits of every level (decodes the codes)
    codec = vqcodec.load_model("tiny.safetensors")  # a model file, or a bundled model's name
    data = vqcodec.compress(image, model=codec, threads=1, metadata="none")

``compress``, ``decompress``, ``decompress_many`` and ``info`` take ``threads=``: the CPU threads torch
may use for the call (None: torch's setting, the number of cores; ``vqcodec.threads``). A damaged or
unsuitable file raises a ``vqcodec.errors.VQZError``, which is an ``OSError`` as Pillow's errors are.

Importing the package registers a Pillow plugin (``Image.open("photo.vqz")``, ``image.save("x.vqz")``)
and asks OpenMP for short spins of torch's idle threads (``GOMP_SPINCOUNT``, unless it or
``OMP_WAIT_POLICY`` is set, and only if torch is not imported yet), so that a busy machine does not
slow vqcodec down many times over (``vqcodec.threads``). torch is imported only when a function that
needs it is first called.
"""

from __future__ import annotations

from vqcodec import pillow_plugin, threads
from vqcodec.api import compress, compress_result, decompress, decompress_many, info, load_model

__version__ = "0.2.5"

__all__ = ["compress", "compress_result", "decompress", "decompress_many", "info", "load_model"]

threads.spin_briefly()
pillow_plugin.register()
