"""Prefect tasks: thin wrappers over `atft_core` that add retries, caching, logging and artifacts.

The logic a task runs lives in `atft_core` and is tested there without Prefect; a task body only
calls it, logs what happened and publishes what a person should see in the UI.
"""
