"""The cohort table: one row per subject, written as CSV and Parquet, atomically."""

from __future__ import annotations

from pathlib import Path

#: Columns that come first, in this order; measurements follow, sorted by name.
FIRST_COLUMNS = ("subject", "status", "error", "seconds", "computed", "reused")


def columns_of(rows: list[dict]) -> list[str]:
    """Every column of ``rows``: :data:`FIRST_COLUMNS`, then the others sorted."""
    others = sorted({key for row in rows for key in row} - set(FIRST_COLUMNS))
    return [c for c in FIRST_COLUMNS if any(c in row for row in rows)] + others


def write_table(rows: list[dict], stem) -> list[Path]:
    """Write ``rows`` to ``<stem>.csv`` and ``<stem>.parquet`` (each replaced atomically)."""
    import pandas as pd

    from ..io.atomic import atomic_output

    stem = Path(stem)
    frame = pd.DataFrame(rows, columns=columns_of(rows))
    written = []
    for suffix, save in ((".csv", lambda f, p: f.to_csv(p, index=False)),
                         (".parquet", lambda f, p: f.to_parquet(p, index=False))):
        path = stem.with_name(stem.name + suffix)
        with atomic_output(path, overwrite=True) as temporary:
            save(frame, temporary)
        written.append(path)
    return written


def read_table(path) -> list[dict]:
    """Rows of a cohort table (CSV or Parquet), empty cells left out."""
    import pandas as pd

    path = Path(path)
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
    return [{k: v for k, v in row.items() if v == v and v != ""} for row in frame.to_dict("records")]
