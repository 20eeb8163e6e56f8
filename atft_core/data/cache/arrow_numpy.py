"""Arrow float columns as numpy arrays without pyarrow's `to_numpy`, which imports pandas (slow).

The cache build converts only float columns (the targets of each record batch; the feature columns
too where numba is missing), and importing pandas for that cost the build as much as its keys' checks.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_FLOATS = {pa.float16(): np.float16, pa.float32(): np.float32, pa.float64(): np.float64}


def float_values(col: pa.Array) -> np.ndarray:
    """A float column's values as a new numpy array, NaN where null (as `to_numpy(zero_copy_only=False)`)."""
    dtype = _FLOATS.get(col.type)
    if dtype is None:
        raise TypeError(f"float_values takes a float column, not {col.type}")
    validity, data = col.buffers()
    n, off = len(col), col.offset
    if data is None:  # nothing stored: only an empty column has no value buffer
        return np.full(n, np.nan, dtype=dtype)
    values = np.frombuffer(data, dtype=dtype, count=off + n)[off:].copy()
    if col.null_count:
        valid = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), count=off + n, bitorder="little")[off:]
        values[valid == 0] = np.nan
    return values
