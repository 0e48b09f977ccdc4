"""Exact inference: the priors' frequency tables and the decoded pixels, the same integers everywhere.

The package mirrors ``bitstream_spec/exact.md``, normative parts first, so a reviewer can check each
module against its sections:

============================  ===========  ==================================================
module                        exact.md     role
============================  ===========  ==================================================
``arithmetic.py``             §2, §4, §5,  constants, tables, rounding, integer operations,
                              §7           logits to frequency tables (normative)
``quantise.py``               §3           a float layer as 8-bit integers (normative)
``prior.py``                  §6, §6.1     the prior's network and its conditioning (normative)
``attention.py``              §6.3         causal attention in integers (normative)
``vqvae.py``                  §10          the pixel decoder (normative)
``stepper.py``                §9           evaluation one wavefront at a time (execution)
``cuda_stepper.py``           §9           the same steps as CUDA graphs (execution)
``gather.py``                 §8           gathering and chunked GEMMs (execution)
``fused.py``, ``_kernels.c``  §8, §9       the CPU's steps and maps compiled, a step in one
                                           call, int8 products included (execution)
``encoder.py``                §11          pixels to codes, whole-map tables (encoder only)
``calibrate.py``              §3.2         a model's input ranges, measured (informative)
============================  ===========  ==================================================

Why every product is exact on every device is §8: its factors are 8-bit integers, so its sums are
int32 values (int8 x int8 -> int32 products on CPUs, float64 GEMMs of the same integers elsewhere).
"""

from vqcodec.exact.prior import ExactPrior
from vqcodec.exact.stepper import ExactStepper
from vqcodec.exact.vqvae import ExactDecoder

__all__ = ["ExactDecoder", "ExactPrior", "ExactStepper"]
