"""Row -> (day, stock) grid coordinates without a Python loop and without sorting strings."""

from __future__ import annotations

import numpy as np


def day_index(dates: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Map raw rows to (day, stock) grid coordinates: sorted calendars plus inverse indices.

    Vectorised, never a Python loop over rows. `np.unique` would sort every string;
    `factorize_sorted` is O(n) for dates and short codes.
    """
    cal, day = factorize_sorted(dates)
    names, stock = factorize_sorted(codes)
    return cal, names, day, stock


def factorize_sorted(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted uniques, inverse) like np.unique(return_inverse=True), in O(n) for the usual key types.

    - dates / integers spanning a modest range: a dense lookup table (no sort, no hash);
    - short ASCII strings (stock codes): packed into one uint64 whose order is the string order,
      then a hash factorize with sorted uniques;
    - anything else: np.unique.
    """
    a = np.asarray(a)
    n = len(a)
    if n and a.dtype.kind in "Miu":
        v = a.view(np.int64) if a.dtype.kind == "M" else a.astype(np.int64, copy=False)
        lo, hi = int(v.min()), int(v.max())
        if hi - lo <= 4 * n + 1024:
            off = v - lo
            present = np.zeros(hi - lo + 1, dtype=bool)
            present[off] = True
            lut = np.cumsum(present, dtype=np.int64) - 1
            return (np.flatnonzero(present) + lo).astype(np.int64).view(a.dtype) if a.dtype.kind == "M" \
                else (np.flatnonzero(present) + lo).astype(a.dtype), lut[off]
    if n and a.dtype.kind == "U" and 0 < a.dtype.itemsize // 4 <= 8:
        w = a.dtype.itemsize // 4
        u = a.view(np.uint32).reshape(n, w)
        if int(u.max()) < 256:
            import pandas as pd  # its hash factorize; only here (slow to import: the build's dates skip it)

            buf = np.zeros((n, 8), dtype=np.uint8)
            buf[:, :w] = u  # left-aligned, NUL-padded: big-endian integer order == string order
            key = buf.view(">u8").ravel().astype(np.uint64)  # native order for the hash table
            inv, uniq = pd.factorize(key, sort=True)
            rep = np.empty(len(uniq), dtype=np.int64)
            rep[inv] = np.arange(n)
            return a[rep], inv.astype(np.int64)
    return np.unique(a, return_inverse=True)
