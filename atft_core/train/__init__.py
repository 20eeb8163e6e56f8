"""Training stage: the per-day loss, the trainer, the batch prefetcher and the GPU utilisation monitor."""
