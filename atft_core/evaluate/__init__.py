"""Evaluation stage: the predict contract, the one metrics module, baselines, controls, the signal report
and plots, the gate."""
