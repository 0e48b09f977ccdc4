"""The recurring measurements behind ``vqcodec bench`` (``cli``), one module each, one report writer.

``rd``: rate-distortion against classical codecs (``codecs``: the adapters; ``plot``: rd.png; PSNR,
MS-SSIM and BD-rates are ``vqcodec.metrics``, which the rate control shares). ``speed``: time and
memory, each timing in a fresh process (``child``), against CompressAI and the compute floor
(``baselines``). ``bpd``: the priors' bits per dimension. ``report``: the machine, markdown tables and
the JSON and markdown files they all write.
Needs the ``bench`` extra (matplotlib, imagecodecs) for the plot and JPEG XL.
"""
