"""Evaluation stage: the one metrics module, baselines, controls, the signal report and plots, the gate."""
