"""Hyper-parameter search on Optuna's public API: search space, storage, objective, worker loop, reports."""
