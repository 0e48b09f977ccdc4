"""Training: one loop (loop.py) for both stages (stage1.py, stage2.py), code extraction, evaluation."""
