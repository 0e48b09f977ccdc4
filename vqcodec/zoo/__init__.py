"""Bundled models: weights and configuration, found by name or by SHA-256."""
