"""Data stage: the input contract, panel sources, the Arrow day x stock cache, day batches, splits, demo market."""
