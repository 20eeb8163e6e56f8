"""Training stage: the per-day loss, the trainer, the batch prefetcher, the GPU utilisation monitor, and
the model as a predictor (`load_model` for a checkpoint)."""
