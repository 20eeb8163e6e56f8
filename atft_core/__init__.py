"""atft_core: the ML library behind the atft pipeline (no Prefect imports here).

Data contract -> Arrow cache -> day batches -> ATFT-GAT-FAN -> loss / metrics -> trainer -> gate.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
