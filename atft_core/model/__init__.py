"""ATFT-GAT-FAN: FAN input normalisation, TFT temporal encoder, GAT across the day's stocks.

The blocks, one kind per module, each with its input / output shapes documented: `fan` (frequency
adaptive normalisation), `gated` (GLU, add & norm, gated residual network), `variable_selection`
(piecewise-linear input codes, variable selection), `static` (static covariate encoder), `temporal`
(LSTM and interpretable attention), `current_day` (the dense current-day path), `cross_section`
(sector-relative context), `graph` (the sparse day graph and graph attention). `atft_gat_fan`
assembles the model and `build_model`.

Shape notation, shared by `atft_core.train` and `atft_core.evaluate`: S stocks (the batch axis), L
window days, F input features, C channels per feature, D model width (``hidden``), H attention heads
(or horizons, where a block says so).
"""

from atft_core.model.atft_gat_fan import ATFTGATFAN, ModelOutput, build_model

__all__ = ["ATFTGATFAN", "ModelOutput", "build_model"]
