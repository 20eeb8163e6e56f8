"""ATFT-GAT-FAN: FAN input normalisation, TFT temporal encoder, GAT across the day's stocks.

`blocks` holds the small pieces (each with its shapes documented), `graph` the sparse day graph and
graph attention, `atft_gat_fan` the assembled model and `build_model`.
"""

from atft_core.model.atft_gat_fan import ATFTGATFAN, ModelOutput, build_model

__all__ = ["ATFTGATFAN", "ModelOutput", "build_model"]
