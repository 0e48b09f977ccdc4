"""Bits: the .vqz container, the range coder and the exact inference of the priors."""
