"""The MMEB layouts written by this project (synthetic sets, caption sets, parity fixtures): one
folder per set of parquet files whose list columns hold the candidates."""

from __future__ import annotations

from pathlib import Path

#: Columns holding one list of strings per row (the candidates of an MMEB-eval row).
LIST_COLUMNS = frozenset({"tgt_text", "tgt_img_path"})

def write_parquet(path: Path, columns: dict[str, list]) -> None:
    """Write string columns (list-of-string for ``LIST_COLUMNS``) with an explicit schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = []
    arrays = []
    for name, values in columns.items():
        kind = pa.list_(pa.string()) if name in LIST_COLUMNS else pa.string()
        fields.append(pa.field(name, kind))
        arrays.append(pa.array(values, type=kind))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields)), path)
