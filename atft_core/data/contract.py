"""The data contract: what a panel must look like, checked before anything is written.

One row per (Date, Code). ``Section`` and ``sector33_code`` are optional static columns.
``target_{h}d`` columns are forward returns (the horizon set is read from the columns present);
any other column whose name starts with ``target_`` is ignored, never used as a feature, because
it is almost certainly future information. Every other numeric column is a feature.

Validation gathers *every* problem before raising one `DatasetError`, so a bad nightly file is
fixed in one round trip instead of one error per run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import polars as pl

from atft_core.data.source import LocalInput
from atft_core.errors import DatasetError, Problem

KEYS = ("Date", "Code")
STATIC = ("Section", "sector33_code")
TARGET_RE = re.compile(r"^target_(\d+)d$")
_ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"


@dataclass
class Contract:
    """What the schema says: which columns play which role."""

    features: list[str]
    targets: list[str]  # sorted by horizon
    horizons: tuple[int, ...]
    static: list[str]
    date_is_string: bool = False
    ignored: list[str] = field(default_factory=list)


def read_schema(inp: LocalInput) -> dict[str, pl.DataType]:
    """Schema of the input; every file of a directory input must agree."""
    schema: dict[str, pl.DataType] | None = None
    for f in inp.files:
        try:
            this = dict(pl.read_parquet_schema(f))
        except Exception as exc:  # polars raises several types for a corrupt footer
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            raise DatasetError(str(f), f"is not a readable parquet file ({reason}); "
                                       "re-export it from the upstream job") from None
        if schema is None:
            schema = this
        elif this != schema:
            diff = sorted(set(this.items()) ^ set(schema.items()), key=str)[:5]
            raise DatasetError(str(f), f"schema differs from {inp.files[0].name} in the same directory: {diff}")
    assert schema is not None
    return schema


def check_schema(schema: dict[str, pl.DataType], source: str) -> Contract:
    problems: list[Problem] = []
    for key in KEYS:
        if key not in schema:
            problems.append(Problem(key, "required key column is missing (rows are identified by Date and Code)"))
    date_is_string = False
    if "Date" in schema:
        dt = schema["Date"]
        if dt == pl.String:
            date_is_string = True  # parsed and checked against one format in check_rows
        elif not (dt == pl.Date or isinstance(dt, pl.Datetime)):
            problems.append(Problem("Date", f"has type {dt}; expected a date (or datetime, or ISO 'YYYY-MM-DD' text)"))
    if "Code" in schema and not (schema["Code"] in (pl.String, pl.Categorical) or isinstance(schema["Code"], pl.Enum)
                                 or schema["Code"].is_integer()):
        problems.append(Problem("Code", f"has type {schema['Code']}; expected a string stock code like '13010'"))

    targets: list[tuple[int, str]] = []
    features: list[str] = []
    ignored: list[str] = []
    for name, dt in schema.items():
        if name in KEYS or name in STATIC:
            continue
        m = TARGET_RE.match(name)
        if m:
            if not (dt.is_numeric()):
                problems.append(Problem(name, f"target has type {dt}; expected a numeric forward return"))
            targets.append((int(m.group(1)), name))
        elif name.startswith("target_"):
            ignored.append(name)  # looks like future information: never a feature
        elif dt.is_numeric() or dt == pl.Boolean:
            features.append(name)
        else:
            problems.append(Problem(name, f"feature has non-numeric type {dt}; encode it as numbers upstream "
                                          "or drop the column"))
    if not targets:
        problems.append(Problem("target_*", "no target column: need at least one forward return named "
                                            "target_{h}d, e.g. target_1d"))
    if not features:
        problems.append(Problem("", "no numeric feature column besides keys, statics and targets"))
    if problems:
        raise DatasetError(source, problems)
    targets.sort()
    return Contract(features=features, targets=[t for _, t in targets], horizons=tuple(h for h, _ in targets),
                    static=[s for s in STATIC if s in schema], date_is_string=date_is_string, ignored=ignored)


def date_expr(contract: Contract) -> pl.Expr:
    """Date as a polars Date. Text dates must all be ISO: mixed formats would silently reorder days."""
    if contract.date_is_string:
        return pl.col("Date").str.strptime(pl.Date, "%Y-%m-%d", strict=False)
    return pl.col("Date").cast(pl.Date)


def check_rows(lf: pl.LazyFrame, contract: Contract, source: str) -> tuple[list[str], dict[str, int]]:
    """Row-level checks in one lazy pass. Returns (warnings, non-finite counts per feature).

    Raises DatasetError listing every fatal problem: zero rows, unparseable dates, null keys,
    duplicate (Date, Code), all-missing targets.
    """
    feats, targets = contract.features, contract.targets
    aggs = [pl.len().alias("__rows"),
            date_expr(contract).is_null().sum().alias("__bad_dates"),
            pl.col("Code").is_null().sum().alias("__null_codes")]
    if contract.date_is_string:
        aggs.append(pl.col("Date").filter(~pl.col("Date").str.contains(_ISO_DATE)).first().alias("__bad_date_example"))
    aggs += [pl.col(t).cast(pl.Float64).is_finite().sum().alias(f"__tf_{t}") for t in targets]
    aggs += [pl.col(c).cast(pl.Float64).is_infinite().sum().alias(f"__inf_{c}") for c in feats]
    aggs += [pl.col(c).cast(pl.Float64).is_finite().sum().alias(f"__fin_{c}") for c in feats]
    stats = lf.select(aggs).collect().row(0, named=True)

    problems: list[Problem] = []
    rows = stats["__rows"]
    if rows == 0:
        raise DatasetError(source, "has zero rows; the upstream export produced an empty panel")
    if stats["__bad_dates"]:
        example = stats.get("__bad_date_example")
        hint = f" (e.g. {example!r})" if example else ""
        problems.append(Problem("Date", f"{stats['__bad_dates']} value(s) are missing or not ISO dates 'YYYY-MM-DD'"
                                        f"{hint}; mixed date formats are ambiguous: export real dates"))
    if stats["__null_codes"]:
        problems.append(Problem("Code", f"{stats['__null_codes']} row(s) have no stock code"))
    for t in targets:
        if stats[f"__tf_{t}"] == 0:
            problems.append(Problem(t, "target is entirely missing (all NaN/null); the upstream label job failed"))
    if not problems:
        dup = (lf.group_by([date_expr(contract).alias("Date"), pl.col("Code").cast(pl.String)])
               .agg(pl.len().alias("n")).filter(pl.col("n") > 1))
        dups = dup.select(pl.len().alias("groups"), pl.col("Date").first(), pl.col("Code").first()).collect().row(0)
        if dups[0]:
            problems.append(Problem("Date, Code", f"{dups[0]} duplicate (Date, Code) key(s), e.g. ({dups[1]}, "
                                                  f"{dups[2]}); each stock may appear once per day"))
    if problems:
        raise DatasetError(source, problems)

    warnings: list[str] = []
    inf_counts = {c: stats[f"__inf_{c}"] for c in feats if stats[f"__inf_{c}"]}
    for c, n in inf_counts.items():
        warnings.append(f"feature '{c}': {n} infinite value(s) turned into missing values")
    for c in feats:
        if stats[f"__fin_{c}"] == 0:
            warnings.append(f"feature '{c}': all values missing; it carries no information and is dropped")
    for c in contract.ignored:
        warnings.append(f"column '{c}' starts with 'target_' but is not target_{{h}}d: ignored (never a feature)")
    return warnings, inf_counts
