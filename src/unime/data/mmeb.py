"""The MMEB layouts: one folder per data set of parquet files (MMEB-train also ``.jsonl``).

The reader both MMEB readers share (:mod:`unime.training.mmeb_data` for MMEB-train,
:mod:`unime.evaluation.mmeb` for MMEB-eval): the data set folders under a root
(:func:`dataset_folders`), the data files of one folder (:func:`data_files`), the rows of one
parquet file with their numbers (:func:`parquet_rows`, :func:`row_label`) and the required-column
check (:func:`missing_columns`). Errors start with the caller's ``context`` (``dataset X``,
``MMEB X``) and name the file; what a row must hold stays with each format's reader.

The writer of the layouts this project makes (synthetic sets, caption sets, parity fixtures):
:func:`write_parquet`, whose list columns (:data:`LIST_COLUMNS`) hold the candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: Columns holding one list of strings per row (the candidates of an MMEB-eval row).
LIST_COLUMNS = frozenset({"tgt_text", "tgt_img_path"})

PARQUET = (".parquet",)
#: Rows decoded at a time when a parquet file is streamed.
CHUNK = 2048


def data_files(folder: Path, suffixes: Sequence[str] = PARQUET, prefix: str | None = None, *,
               any_entry: bool = False) -> tuple[Path, ...]:
    """The regular files directly in ``folder`` with one of ``suffixes`` (and whose name starts with
    ``prefix``, when given), sorted by name.

    ``any_entry``: every entry whose name ends with one of ``suffixes``, as the glob ``*.parquet``
    finds them (MMEB-eval's rule): a folder or a link of such a name too, and a file named just
    the suffix.
    """
    def wanted(path: Path) -> bool:
        if prefix is not None and not path.name.startswith(prefix):
            return False
        if any_entry:
            return path.name.endswith(tuple(suffixes))
        return path.is_file() and path.suffix in suffixes

    return tuple(sorted(p for p in folder.iterdir() if wanted(p)))


def dataset_folders(root: Path, suffixes: Sequence[str] = PARQUET, prefix: str | None = None, *,
                    any_entry: bool = False) -> dict[Path, tuple[Path, ...]]:
    """The sub-folders of ``root`` holding :func:`data_files` (``suffixes``, ``prefix``,
    ``any_entry`` as there), sorted by name, each with its files; a sub-folder without any is left
    out."""
    found = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            files = data_files(entry, suffixes, prefix, any_entry=any_entry)
            if files:
                found[entry] = files
    return found


def missing_columns(required: Sequence[str], names: Sequence[str]) -> list[str]:
    """The ``required`` columns not among ``names``, in ``required``'s order."""
    return [name for name in required if name not in names]


def row_label(path: Path, index: int) -> str:
    """Where a row came from: ``<file name> row <index>``, counted from 0 in each file."""
    return f"{path.name} row {index}"


def parquet_rows(path: Path, context: str, check: Callable[[list[str]], None] | None = None, *,
                 columns: Sequence[str] | None = None,
                 decode: str = "arrow") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, row)`` for each row of one parquet file, in file order, ``index`` from 0.

    ``check`` gets the file's column names before any row (it raises to reject the file);
    ``columns`` keeps only those columns of each row. ``decode``:

    - ``"arrow"``: streamed :data:`CHUNK` rows at a time, cells as Python values (a list column
      gives lists, a null gives None); a file that breaks while read fails naming the last row read.
    - ``"pandas"``: the whole file read by pandas, cells as pandas gives them (a list column gives
      arrays, a null string NaN).

    A file that cannot be read raises ``ValueError("<context>: cannot read <path>: ...")``.
    """
    if decode not in ("arrow", "pandas"):
        raise ValueError(f"decode must be arrow or pandas, got {decode!r}")
    if decode == "pandas":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except Exception as error:  # pyarrow raises several types for a damaged or empty file
            raise ValueError(f"{context}: cannot read {path}: {error}") from None
        if check is not None:
            check(list(frame.columns))
        if columns is not None:
            frame = frame[list(columns)]
        yield from enumerate(frame.to_dict("records"))
        return
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{context}: cannot read {path}: {error}") from None
    if check is not None:
        check(handle.schema_arrow.names)
    index = 0
    batches = handle.iter_batches(batch_size=CHUNK, columns=None if columns is None else list(columns))
    while True:
        try:
            batch = next(batches, None)
        except Exception as error:  # damaged pages surface while reading, not when opening
            raise ValueError(f"{context}: cannot read {path} after row {index}: {error}") from None
        if batch is None:
            return
        for row in batch.to_pylist():
            yield index, row
            index += 1


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
