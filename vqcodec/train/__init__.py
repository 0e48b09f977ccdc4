"""Training: one loop (loop.py) for every stage (stage1.py: the VQ-VAE; decoder.py: its decoder refined
for the integer engine; stage2.py: the priors, on codes cached by extract.py), with evaluate.py's
measurements; run.py and checkpoint.py hold a run's folder, from_model.py starts one from a model
file, export.py turns one into a model file, pack.py packs images to train on elsewhere."""
