"""Each chunk of days normalised, screened and written once, as soon as all its rows have been read.

Cross-sectional z-scores need only the chunk's own days. Market-level features are normalised over
*past* days (a z-score of their daily series), so a chunk can be finished as soon as every earlier
day's statistics are known: on a file ordered by date that is every chunk, in order, and the grid
file is written exactly once (nothing read back).

Which features are market-level is decided over all days (`DayStats.market_mask`). The stream
decides it from the days seen when the first chunk is finished (a *guess*); the caller compares it
with the mask over all days at the end and, in the rare case they differ, builds again with the
right mask, so the result is always the one a whole-panel build gives. Chunks that complete before
an earlier one (rows of a day spread over the file) are written with their same-day z-scores, and
`finish` reads them back to fill in their market-level features.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from atft_core.config import CacheConfig
from atft_core.data.cache.grid_file import ALIGN, GridFile
from atft_core.data.cache.leak import daily_rankics
from atft_core.data.cache.normalise import DayStats, Scratch, cross_section_days, fill_market, standardise_targets

log = logging.getLogger("atft_core.data.cache.grid_build")
F32 = np.dtype(np.float32)
# Chunks handed over and not yet normalised: the reader runs ahead by up to this many (a chunk buffer
# each: 0.1 GB at 16 x 4,000 x 400) instead of waiting for each chunk to be normalised and written.
_QUEUE = 3


class ChunkStream:
    """Takes whole chunks of raw days ([c, F, S] float32, feature-major, NaN = missing) and writes them
    normalised in the cache's layout ([c, S, F]).

    Work runs on one background thread, in the order chunks are given, so reading the next
    record batches overlaps it; up to `_QUEUE` chunks wait. ``market`` [F] fixes the market-level
    features (a rebuild); None guesses them from the first finished chunk's days.
    """

    def __init__(self, grid: GridFile, valid: np.ndarray, y: np.ndarray, cfg: CacheConfig, n_feat: int,
                 screened: np.ndarray, market: np.ndarray | None, progress: bool):
        self.grid, self.valid, self.y, self.cfg = grid, valid, y, cfg  # valid [D, S] bool, y [D, S, H]
        self.y_z = np.empty_like(y)  # the targets' per-day z-scores, a chunk's days once its rows are in
        self.n_days = valid.shape[0]
        self.chunk = max(1, cfg.chunk_days)
        self.stats = DayStats(self.n_days, n_feat)
        self.market = market
        self.guessed = market is None
        self.screened = screened
        self.rics: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # screened day -> (ric [H, F], stocks [H, F])
        self.n_feat = n_feat
        self.cs_nonzero = np.zeros(n_feat, dtype=bool)  # z-scored per day: nonzero on some day
        self.market_nonzero = np.zeros(n_feat, dtype=bool)  # market-level: nonzero on some day
        self.done = np.zeros(-(-self.n_days // self.chunk), dtype=bool)  # statistics taken
        self.raw: list[int] = []  # chunks written raw, finished in `finish`
        self.progress, self.t0 = progress, time.perf_counter()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: deque[Future] = deque()  # chunks given, in order, not yet taken
        self._writer = ThreadPoolExecutor(max_workers=1)  # the writes (I/O) overlap the next chunk's work
        self._written: Future | None = None
        self._free: list[np.ndarray] = []  # flat chunk buffers (chunk x S x F floats and a page), reused
        self._floats = self.chunk * valid.shape[1] * n_feat
        self._scratch = Scratch((n_feat, valid.shape[1]))  # the day normaliser's sorted copies
        self._lock = threading.Lock()

    def slab(self, days: int) -> np.ndarray:
        """A [days, F, S] float32 buffer for a chunk's raw values (feature-major: each day's block is
        ready for the row sort), a written chunk's when there is one.

        Not cleared (a 0.4 GB fill per 64 x 4,000 x 400 chunk was ~8 % of the build's time): every
        cell with a row is overwritten by the scatter, and the others are never read as values.
        """
        return self._buffer(days).reshape(days, self.n_feat, self.valid.shape[1])

    def _buffer(self, days: int, place_like: int | None = None) -> np.ndarray:
        """days x S x F floats, flat. ``place_like``: a file offset; the view then starts at the same
        place within a 4 KB page, so its write goes to the file with O_DIRECT straight from it (a copy
        through a bounce buffer is a full pass over the grid). Reused rather than allocated: first
        touching fresh memory (page faults) costs about as much as normalising the chunk."""
        with self._lock:
            buf = self._free.pop() if self._free else None
        if buf is None:
            buf = np.empty(self._floats + ALIGN // 4, dtype=F32)  # room to shift the start within a page
        start = 0 if place_like is None else (place_like - buf.ctypes.data) % ALIGN // 4
        return buf[start:start + days * self.valid.shape[1] * self.n_feat]

    def _recycle(self, x: np.ndarray) -> None:
        base = x
        while isinstance(base.base, np.ndarray):
            base = base.base
        if base.ndim == 1 and base.size == self._floats + ALIGN // 4 and base.dtype == F32:
            with self._lock:
                self._free.append(base)

    def put(self, c: int, slab: np.ndarray) -> None:
        """Chunk c's raw values, every row present; taken over (the caller must not reuse ``slab``).

        Cells of (day, stock) pairs without a row hold whatever the buffer held: the normaliser
        knows them from ``valid`` (filling them with NaN here was a strided write over the chunk).
        """
        while len(self._pending) >= _QUEUE:  # the reader is ahead: let the normaliser catch up
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._take, c, slab))

    def wait(self) -> None:
        """Until every chunk given is taken and written (before the caller reads the grid file itself)."""
        while self._pending:
            self._pending.popleft().result()
        self._wait_write()

    def _write(self, d0: int, x: np.ndarray) -> None:
        """Chunk x [c, S, F] to the grid from day d0 on the writer thread; at most one write pending
        (one more chunk buffer alive: ~0.4 GB at 64 x 4,000 x 400)."""
        self._wait_write()

        def write() -> None:
            self.grid.write_days("x", d0, x)
            self._recycle(x)

        self._written = self._writer.submit(write)

    def _wait_write(self) -> None:
        if self._written is not None:
            self._written.result()
            self._written = None

    def finish(self) -> None:
        """Fill in the market-level features of the chunks written before their earlier days were known."""
        self.wait()
        self._pool.shutdown()
        self._free = []
        for c in self.raw:
            d0, d1 = self._days(c)
            self._complete(c, self.grid.read_days("x", d0, d1, F32, self.n_feat))
        self.raw = []
        self._wait_write()
        self._writer.shutdown()

    @property
    def nonzero(self) -> np.ndarray:
        """[F] bool: the feature's cache values are nonzero somewhere."""
        market = np.zeros(self.n_feat, dtype=bool) if self.market is None else self.market
        return np.where(market, self.market_nonzero, self.cs_nonzero)

    def abandon(self) -> None:
        """The build stopped early: let the pending work end (its errors no longer matter), then the threads."""
        for future in (*self._pending, self._written):
            if future is not None:
                try:
                    future.result()
                except Exception:  # noqa: BLE001  (the build is being thrown away: its error is moot)
                    log.debug("work of an abandoned build failed", exc_info=True)
        self._pending.clear()
        self._written = None
        self._pool.shutdown()
        self._writer.shutdown()

    def _take(self, c: int, slab: np.ndarray) -> None:
        d0, d1 = self._days(c)
        x = self._buffer(d1 - d0, self.grid.byte_offset("x", d0)).reshape(d1 - d0, self.valid.shape[1], self.n_feat)
        summaries, nonzero = cross_section_days(slab, self.valid[d0:d1], self.cfg.clip, x,  # same day: final
                                                scratch=self._scratch)
        self._recycle(slab)
        self.y_z[d0:d1] = standardise_targets(self.y[d0:d1], self.cfg.clip)  # here, not after the last chunk
        self.stats.add(d0, summaries)
        self.cs_nonzero |= nonzero.any(axis=0)
        self.done[c] = True
        if self.done[:c].all():  # every earlier day's daily mean is known: past-only statistics are final
            self._complete(c, x)
        else:
            self._write(d0, x)
            self.raw.append(c)

    def _complete(self, c: int, x: np.ndarray) -> None:
        """Chunk c's market-level features from past days, its leak screen, and its write."""
        d0, d1 = self._days(c)
        if self.market is None:
            self.market = self.stats.market_mask()
        market_z = self.stats.market_z_days(self.market, self.cfg, d0, d1)
        self.market_nonzero |= fill_market(x, self.valid[d0:d1], self.market, market_z)
        here = self.screened[(self.screened >= d0) & (self.screened < d1)]
        if len(here):
            ric, cnt = daily_rankics(x[here - d0], self.y[here], self.valid[here])
            for i, d in enumerate(here.tolist()):
                self.rics[d] = (ric[i], cnt[i])
        self._write(d0, x)
        if self.progress and self.n_days > self.chunk:
            log.info("normalised days %d-%d of %d (%.1fs)", d0, d1, self.n_days, time.perf_counter() - self.t0)

    def _days(self, c: int) -> tuple[int, int]:
        return c * self.chunk, min((c + 1) * self.chunk, self.n_days)

    def screen(self) -> tuple[np.ndarray, np.ndarray]:
        """(ric [n, H, F], stocks [n, H, F]) over the screened days, in day order."""
        days = sorted(self.rics)
        return np.stack([self.rics[d][0] for d in days]), np.stack([self.rics[d][1] for d in days])
