"""Exact inference: the priors' frequency tables and the decoded pixels, the same integers everywhere.

The package mirrors ``bitstream_spec/exact.md``, normative parts first, so a reviewer can check each
module against its sections:

============================  ===========  ==================================================
module                        exact.md     role
============================  ===========  ==================================================
``arithmetic.py``             §2, §4, §5,  constants, tables, rounding, integer operations,
                              §7           logits to frequency tables (normative)
``quantise.py``               §3           a float prior's weights as integers (normative)
``prior.py``                  §6, §6.1     the prior's network and its conditioning (normative)
``attention.py``              §6.3         causal attention in integers (normative)
``vqvae.py``                  §10          the pixel decoder (normative)
``stepper.py``                §9           evaluation one wavefront at a time (execution)
``cuda_stepper.py``           §9           the same steps as CUDA graphs (execution)
``gather.py``                 §8           gathering and chunked GEMMs (execution)
``encoder.py``                §11          pixels to codes, whole-map tables (encoder only)
============================  ===========  ==================================================

Why float64 GEMMs give exact integers on every device is §8: every operand is an integer (times a
power of two) and every partial sum stays below 2**53.
"""

from vqcodec.exact.prior import ExactPrior
from vqcodec.exact.stepper import ExactStepper
from vqcodec.exact.vqvae import ExactDecoder

__all__ = ["ExactDecoder", "ExactPrior", "ExactStepper"]
