"""The Arrow day x stock cache: building it from a checked panel (`build`) and opening it (`store`).

The build's parts: `grid_build` plans and streams the grid, `grid_stream` normalises chunks of days
on worker threads, `normalise` the per-day robust z-scores, `build_kernels` their compiled loops,
`leak` the look-ahead screen, `grid_file` the file written in place, `indexing` and `arrow_numpy`
the row -> grid conversions.
"""
