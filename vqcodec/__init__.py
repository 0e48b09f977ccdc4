"""vqcodec: a learned lossy image codec built on VQ-VAE-2 and PixelSNAIL priors."""

__version__ = "0.1.0"
