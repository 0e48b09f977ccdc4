"""Rate-distortion benchmarks of vqcodec against classical codecs (``vqcodec bench``).

``run.run_benchmark`` runs every codec of ``codecs`` over a folder of images and writes one JSON
file per codec (CompressAI's results format), ``results.md`` and ``rd.png``; ``metrics`` has PSNR,
MS-SSIM and the Bjøntegaard delta rate. Needs the ``bench`` extra (matplotlib, imagecodecs).
"""
