"""Prefect flows: how the stages chain (cache -> GPU dry run -> gate -> HPO), nothing more."""
