"""The networks: hierarchical VQ-VAE and PixelSNAIL priors (pure torch, no I/O)."""
