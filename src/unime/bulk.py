"""Bulk embedding: the rows of a JSON Lines, CSV or parquet file to a folder of parquet shards that a
killed job resumes without redoing a finished shard, in this process or on a Ray Data actor pool.

    from unime.bulk import embed_to_parquet, read_embeddings

    embed_to_parquet("runs/stage2", "rows.jsonl", "emb", engine="ray", actors=2)
    ids, matrix = read_embeddings("emb")  # input order, checked against the manifest

The output folder (docs/bulk.md, "Output layout"):

- ``manifest.json``: what the folder is for: the input's size and SHA-256, the model and the options
  that change an embedding, the shard size, the row and shard counts. Written first, atomically; a
  rerun whose input or options differ is refused, naming the difference.
- ``part-00000.parquet``, ``part-00001.parquet``, ...: shard k holds rows [k*S, (k+1)*S) of the
  input, in input order, as columns ``id`` and ``embedding`` (a fixed-size list of float32).

Shards are cut by row position, never by which worker took them, so both engines (and any number of
actors) write the same files, and a job may be resumed by the other engine. Each shard is written
under a hidden temporary name and renamed into place, so a shard's final name only ever holds a
whole file; a rerun keeps every shard that reads back with the ids it must hold (page checksums
verified) and embeds the others again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from unime.inputs import EmbedInput

MANIFEST = "manifest.json"
FORMAT = "unime-bulk-embeddings"
FORMAT_VERSION = 1
ENGINES = ("local", "ray")
INPUT_SUFFIXES = (".jsonl", ".csv", ".parquet")
DEFAULT_SHARD_ROWS = 1000
EXTRA = "pip install 'unime[ray]'"
#: Fault injection for the reliability tests: ``K:MARKER``. The process that embeds shard K kills itself
#: with SIGKILL after writing the shard's temporary file and before renaming it, once: only while the
#: file MARKER does not exist (it is created first).
FAULT_ENV = "UNIME_FAULT_KILL_AT_SHARD"

_INPUT_COLUMNS = ("text", "image", "video", "instruction")
_ROW_INDEX = "row index"
_ID_COLUMN = "id column"

logger = logging.getLogger(__name__)


class MissingExtra(ImportError):
    """A package of an optional extra (Ray Data, pyarrow) is not installed; the message says what to install."""


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or :class:`MissingExtra` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingExtra(f"the ray engine needs Ray Data: {EXTRA}") from None
    return ray


def require_pyarrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or :class:`MissingExtra` naming the extra to install."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingExtra(f"parquet files need pyarrow: {EXTRA}") from None
    return pyarrow, pyarrow.parquet


# ----------------------------------------------------------------------------- reading the input


@dataclass(frozen=True)
class InputRows:
    """The validated rows of an input file: ``ids[i]`` is the id of ``inputs[i]``; ``id_column`` says
    whether the file gave the ids (else they are the rows' 0-based positions)."""

    path: Path
    ids: list[Any]
    inputs: list[EmbedInput]
    id_column: bool
    names: list[str]


def read_input_rows(path: str | os.PathLike[str]) -> InputRows:
    """Read and validate every row of a ``.jsonl``, ``.csv`` or ``.parquet`` file before any model work.

    Rows have ``text``, ``image`` (a path, relative to the file's folder) and ``instruction``, at least a
    text or an image, and optionally an ``id`` (an integer or a string; all rows or none, no two
    alike). Errors name the file and the row: ``line N`` in a JSON Lines or CSV file (the file's
    lines, from 1), ``row N`` in a parquet file (0-based, the row's default id).
    """
    from unime.inputs import to_input

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise ValueError(f"{path}: unknown extension {suffix or '(none)'!r}: the input must be .jsonl, .csv or .parquet")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    rows = {".jsonl": _jsonl_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}[suffix](path)
    ids: list[Any] = []
    inputs: list[EmbedInput] = []
    names: list[str] = []
    seen: dict[Any, str] = {}
    first: tuple[str, bool, type | None] | None = None  # where, has an id, the id's type
    for where, row in rows:
        identifier = row.pop("id", None)
        if first is None:
            first = (where, identifier is not None, type(identifier) if identifier is not None else None)
        if identifier is None and first[1]:
            raise ValueError(f"{where}: no 'id', but {first[0]} has one (give every row an id, or none)")
        if identifier is not None:
            if not first[1]:
                raise ValueError(f"{where}: has an 'id', but {first[0]} has none (give every row an id, or none)")
            if isinstance(identifier, bool) or not isinstance(identifier, (int, str)) or identifier == "":
                raise ValueError(f"{where}: 'id' must be an integer or a non-empty string, got {identifier!r}")
            if type(identifier) is not first[2]:
                raise ValueError(f"{where}: id {identifier!r} is a {type(identifier).__name__}, but {first[0]}'s "
                                 f"is a {first[2].__name__}")
            if identifier in seen:
                raise ValueError(f"{where}: id {identifier!r} repeats {seen[identifier]}'s")
            seen[identifier] = where
        # A non-string image is left to to_input, which names the key and the type.
        if isinstance(row.get("image"), str) and row["image"]:
            image = Path(row["image"])
            row["image"] = str(image if image.is_absolute() else path.parent / image)
            if not Path(row["image"]).is_file():
                raise FileNotFoundError(f"{where}: image file not found: {row['image']}")
        # A video is a file or a list of frame files; other types are left to to_input, which names them.
        video = row.get("video")
        if isinstance(video, str) and video:
            row["video"] = _resolve(video, path, where, "video")
        elif isinstance(video, list):
            row["video"] = [_resolve(frame, path, f"{where}: video[{index}]", "frame image")
                            if isinstance(frame, str) and frame else frame for index, frame in enumerate(video)]
        inputs.append(to_input(row, where=where))
        ids.append(identifier)
        names.append(where)
    if not inputs:
        raise ValueError(f"{path}: no rows to embed")
    named = first is not None and first[1]
    return InputRows(path, ids if named else list(range(len(inputs))), inputs, named, names)


def _resolve(value: str, path: Path, where: str, what: str) -> str:
    """A path of a row, relative to the input file's folder, that must name a file."""
    resolved = Path(value) if Path(value).is_absolute() else path.parent / value
    if not resolved.is_file():
        raise FileNotFoundError(f"{where}: {what} file not found: {resolved}")
    return str(resolved)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    from unime.io.jsonl import iter_jsonl, text_lines

    for number, row, error in iter_jsonl(text_lines(path)):
        where = f"{path} line {number}"
        if error is not None:
            raise ValueError(f"{where}: not valid JSON ({error})")
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object with text / image / instruction (and an optional id)")
        yield where, row


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """CSV rows with a header; an empty cell is an absent value. Ids are strings (CSV has no types)."""
    from unime.data.records import read_records

    for number, row in read_records(path):
        yield f"{path} line {number}", {key: (value if value != "" else None) for key, value in row.items()}


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    pa, pq = require_pyarrow()
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{path}: not a readable parquet file ({error})") from None
    unknown = sorted(set(table.column_names) - {*_INPUT_COLUMNS, "id"})
    if unknown:
        raise ValueError(f"{path}: unknown columns {unknown}; allowed: id, image, instruction, text, video")
    for name in table.column_names:
        kind = table.schema.field(name).type
        strings = pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
        frames = name == "video" and pa.types.is_list(kind) and pa.types.is_string(kind.value_type)
        if not (strings or frames or (name == "id" and pa.types.is_integer(kind))):
            expected = "integers or strings" if name == "id" else "strings"
            raise ValueError(f"{path}: column {name!r} holds {kind}; expected {expected}")
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    for index in range(table.num_rows):
        yield f"{path} row {index}", {name: values[index] for name, values in columns.items()}


# ----------------------------------------------------------------------------- the output folder


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def _shard_bounds(shard: int, shard_rows: int, rows: int) -> tuple[int, int]:
    return shard * shard_rows, min((shard + 1) * shard_rows, rows)


def _model_identity(model: str) -> str:
    """A local model folder by its absolute path (the same folder however it is named), a hub id as given."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def _manifest(rows: InputRows, model: str, *, mode: str | None, dtype: str, dimensions: int | None,
              shard_rows: int) -> dict[str, Any]:
    from unime.io.integrity import file_entry

    count = len(rows.inputs)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "input": {"path": str(rows.path.resolve()), **file_entry(rows.path)},
        "ids": _ID_COLUMN if rows.id_column else _ROW_INDEX,
        "model": _model_identity(model),
        "mode": mode,
        "dtype": dtype,
        "dimensions": dimensions,
        "shard_rows": shard_rows,
        "rows": count,
        "shards": -(-count // shard_rows),
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between a folder's manifest and this job's, in words (the input's path may differ)."""
    found = []
    before, now = old.get("input") or {}, new["input"]
    if (before.get("size"), before.get("sha256")) != (now["size"], now["sha256"]):
        found.append(f"the input differs: the folder was written for {before.get('path')} ({before.get('size')} "
                     f"bytes, SHA-256 {str(before.get('sha256'))[:12]}...), this job reads {now['path']} "
                     f"({now['size']} bytes, SHA-256 {now['sha256'][:12]}...)")
    for key in new:
        if key != "input" and old.get(key) != new[key]:
            found.append(f"{key} {old.get(key)!r} there, {new[key]!r} now")
    return found


def _prepare_folder(folder: Path, manifest: dict[str, Any]) -> None:
    """Start a job in an empty or new folder, or resume one whose manifest matches this job's (a folder
    that holds no shard yet takes this job's manifest whatever it held)."""
    from unime.io.integrity import write_json_atomic
    from unime.io.jsonl import read_json

    path = folder / MANIFEST
    if path.is_file():
        old = read_json(path)
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise ValueError(f"{path}: not the manifest of a bulk embedding folder")
        differences = _differences(old, manifest)
        if differences and not any(folder.glob("part-*.parquet")):
            # Nothing embedded yet (the job stopped before its first shard, e.g. on a bad option):
            # nothing is lost by starting this job there instead.
            logger.info("%s: no shard written yet; starting again with this job's settings", folder)
            write_json_atomic(path, manifest)
            return
        if differences:
            raise ValueError(f"{path}: written for another job ({'; '.join(differences)}); write to another "
                             "folder, or delete this one to start again")
        if old != manifest:  # the same job with its input moved: the folder records where it is now
            write_json_atomic(path, manifest)
        return
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "is not a folder" if not folder.is_dir() else f"is not empty and holds no {MANIFEST}"
        raise ValueError(f"{folder}: {what}: bulk embeddings go to a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, manifest)


def _remove_temporaries(folder: Path) -> None:
    """Shards' temporary files left by a killed job (never a finished shard: those have their final name)."""
    for leftover in folder.glob(".part-*.tmp"):
        leftover.unlink(missing_ok=True)


def _read_shard(path: Path, rows: int) -> tuple[Any, str | None]:
    """``(table, None)`` when ``path`` is a whole shard of ``rows`` rows, else ``(None, why not)``."""
    pa, pq = require_pyarrow()
    if not path.is_file():
        return None, "missing"
    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as error:
        return None, f"unreadable ({error})"
    if table.column_names != ["id", "embedding"]:
        return None, f"columns {table.column_names}, expected ['id', 'embedding']"
    kind = table.schema.field("embedding").type
    if not pa.types.is_fixed_size_list(kind) or kind.value_type != pa.float32():
        return None, f"embedding column of type {kind}, expected a fixed-size list of float"
    if table.num_rows != rows:
        return None, f"{table.num_rows} rows, expected {rows}"
    if table.column("embedding").null_count or table.column("id").null_count:
        return None, "null values"
    return table, None


def _shard_state(path: Path, ids: Sequence[Any]) -> str | None:
    """None when the shard at ``path`` is finished (whole, with exactly ``ids``), else why it is not."""
    table, reason = _read_shard(path, len(ids))
    if reason is None and table.column("id").to_pylist() != list(ids):
        reason = "its ids differ from the input's rows"
    return reason


def _write_shard(folder: Path, shard: int, ids: Sequence[Any], embeddings: np.ndarray) -> None:
    """Write a shard under a temporary name unique to this writer, then rename it into place."""
    import numpy as np

    pa, pq = require_pyarrow()
    matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
    id_type = pa.string() if isinstance(ids[0], str) else pa.int64()
    table = pa.table({
        "id": pa.array(list(ids), type=id_type),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), type=pa.float32()),
                                                       matrix.shape[1]),
    })
    final = folder / shard_name(shard)
    temporary = folder / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, temporary, write_page_checksum=True)
        _fault(shard)
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _fault(shard: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, marker = spec.partition(":")
    if int(target) != shard or not marker or os.path.exists(marker):
        return
    Path(marker).touch()
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
    os._exit(137)  # where the signal is not delivered at once


# ----------------------------------------------------------------------------- embedding a shard


def _load_model(model: str, options: dict[str, Any]) -> Any:
    import unime
    from unime.environment import resolve_dtype

    loaded = unime.load(model, trust_remote_code=options["trust_remote_code"], device=options["device"],
                        dtype=resolve_dtype(options["dtype"], options["device"]), mode=options["mode"])
    if options["dimensions"] is not None:
        loaded.set_dimensions(options["dimensions"])
    return loaded


def _embed_shard(model: Any, folder: Path, shard: int, first: int, ids: Sequence[Any],
                 inputs: Sequence[EmbedInput], batch_size: int, source: str) -> float:
    """Embed one shard's rows and write its file; the seconds it took. Errors name the input's rows."""
    started = time.perf_counter()
    try:
        embeddings = model.encode(list(inputs), batch_size=batch_size, show_progress_bar=False)
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"{source} rows {first}-{first + len(inputs) - 1} ({shard_name(shard)}; 'input i' "
                         f"below is row {first}+i): {error}") from None
    _write_shard(folder, shard, ids, embeddings)
    return time.perf_counter() - started


def _payload(ids: Sequence[Any], inputs: Sequence[EmbedInput], first: int) -> str:
    """A shard's rows as JSON, for a Ray worker (image paths are already absolute)."""
    rows = [{"text": x.text, "image": None if x.image is None else str(x.image), "instruction": x.instruction}
            for x in inputs]
    return json.dumps({"first": first, "ids": list(ids), "rows": rows})


class _ShardWorker:
    """A Ray Data actor: loads the model once, then embeds and writes the shards it is handed (one a
    call). A failure to load or embed is returned as the shard's ``error`` for the driver to raise,
    so a bad model or image stops the job with its message instead of being retried."""

    def __init__(self, model: str, options: dict[str, Any], folder: str, batch_size: int, source: str) -> None:
        self.folder, self.batch_size, self.source = Path(folder), batch_size, source
        self.model, self.error = None, ""
        try:
            self.model = _load_model(model, options)
        except (ValueError, OSError) as error:
            self.error = f"{model}: {error}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from unime.inputs import EmbedInput

        shards, rows, seconds, errors = [], [], [], []
        for shard, payload in zip(batch["shard"], batch["payload"], strict=True):
            data = json.loads(str(payload))
            inputs = [EmbedInput(**row) for row in data["rows"]]
            error, took = self.error, 0.0
            if not error:
                try:
                    took = _embed_shard(self.model, self.folder, int(shard), data["first"], data["ids"], inputs,
                                        self.batch_size, self.source)
                except (ValueError, OSError) as failure:
                    error = str(failure)
            shards.append(int(shard))
            rows.append(len(inputs))
            seconds.append(took)
            errors.append(error)
        return {"shard": np.array(shards), "rows": np.array(rows), "seconds": np.array(seconds),
                "error": np.array(errors, dtype=object)}


# ----------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class BulkResult:
    """What a call of :func:`embed_to_parquet` did: ``embedded`` the shards it wrote (in the order they
    finished), ``skipped`` those it found finished and kept."""

    output_dir: Path
    rows: int
    shards: int
    embedded: tuple[int, ...]
    skipped: tuple[int, ...]
    seconds: float


def embed_to_parquet(
    model: str,
    input_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    engine: str = "local",
    actors: int = 1,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    batch_size: int = 16,
    device: str | None = None,
    dtype: str = "auto",
    mode: str | None = None,
    dimensions: int | None = None,
    trust_remote_code: bool = False,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> BulkResult:
    """Embed every row of ``input_path`` into parquet shards in ``output_dir``, resuming a job begun there.

    Args:
        model: anything :func:`unime.load` takes; each worker (this process, or each Ray actor) loads it.
        input_path: a ``.jsonl``, ``.csv`` or ``.parquet`` file of rows (:func:`read_input_rows`),
            all validated before any model work.
        output_dir: a new or empty folder, or the folder of the same job to resume (its manifest must
            match this call's input, model and options, else a ValueError names the difference).
        engine: ``"local"`` (this process, one model) or ``"ray"`` (a Ray Data actor pool).
        actors: the ray engine's number of actors, one model each.
        shard_rows: rows per shard; the last shard holds the rest.
        batch_size, device, dtype, mode, dimensions, trust_remote_code: as for ``unime encode``; ``dtype``
            ``"auto"`` is resolved by each worker for its own device.
        num_gpus: GPUs per actor (ray engine); None: 1 when the Ray cluster has GPUs, else 0.
        num_cpus: CPUs per actor (ray engine), which Ray also gives each actor as its thread count
            (``OMP_NUM_THREADS``); None: the cluster's CPUs shared among the actors when they run on
            CPUs (at least 1 each), Ray Data's default of 1 when they run on GPUs.
        progress: called with one line per finished shard (and a first and a last line); None: logged.

    The ray engine joins the running Ray instance (``ray.init`` called before, or ``RAY_ADDRESS``), else
    starts a local one for the call and shuts it down after. Returns a :class:`BulkResult`.
    """
    from unime.model_names import check_model_name

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    for name, value in (("actors", actors), ("shard_rows", shard_rows), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if engine == "local" and actors != 1:
        raise ValueError(f"actors={actors} is for the ray engine; the local engine runs one model")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions <= 0):
        raise ValueError(f"dimensions must be a positive integer, got {dimensions!r}")
    if engine == "ray":
        require_ray()
    require_pyarrow()
    check_model_name(str(model), option="model")
    report = progress or logger.info
    started = time.perf_counter()
    rows = read_input_rows(input_path)
    folder = Path(output_dir)
    manifest = _manifest(rows, model, mode=mode, dtype=dtype, dimensions=dimensions, shard_rows=shard_rows)
    _prepare_folder(folder, manifest)
    _remove_temporaries(folder)
    total = manifest["shards"]
    bounds = [_shard_bounds(shard, shard_rows, len(rows.ids)) for shard in range(total)]
    pending, skipped = [], []
    for shard, (first, end) in enumerate(bounds):
        reason = _shard_state(folder / shard_name(shard), rows.ids[first:end])
        if reason is None:
            skipped.append(shard)
        else:
            pending.append(shard)
            if reason != "missing":
                report(f"{shard_name(shard)}: {reason}: embedding it again")
    report(f"{folder}: {len(rows.ids)} rows in {total} shards of {shard_rows}; "
           + (f"{len(skipped)} already done, " if skipped else "") + f"{len(pending)} to embed ({engine} engine)")
    options = {"trust_remote_code": trust_remote_code, "device": device, "dtype": dtype, "mode": mode,
               "dimensions": dimensions}
    embedded: list[int] = []
    if pending:
        run = _run_local if engine == "local" else _run_ray
        finished = run(model, options, rows, folder, pending, bounds, batch_size=batch_size, actors=actors,
                       num_gpus=num_gpus, num_cpus=num_cpus)
        for shard, count, seconds in finished:
            embedded.append(shard)
            done = len(skipped) + len(embedded)
            rate = f"{count / seconds:.1f} rows/s" if seconds > 0 else "rows/s n/a"
            report(f"shard {done}/{total} done: {shard_name(shard)} ({count} rows, {rate})")
    seconds = time.perf_counter() - started
    embedded_rows = sum(bounds[shard][1] - bounds[shard][0] for shard in embedded)
    report(f"{folder}: all {total} shards done; {embedded_rows} rows embedded in {seconds:.1f} s"
           + (f" ({embedded_rows / seconds:.1f} rows/s)" if embedded_rows else ""))
    return BulkResult(folder, len(rows.ids), total, tuple(embedded), tuple(skipped), seconds)


def _run_local(model: str, options: dict[str, Any], rows: InputRows, folder: Path, pending: list[int],
               bounds: list[tuple[int, int]], *, batch_size: int, **_: Any) -> Iterator[tuple[int, int, float]]:
    loaded = _load_model(model, options)
    for shard in pending:
        first, end = bounds[shard]
        seconds = _embed_shard(loaded, folder, shard, first, rows.ids[first:end], rows.inputs[first:end], batch_size,
                               str(rows.path))
        yield shard, end - first, seconds


def _run_ray(model: str, options: dict[str, Any], rows: InputRows, folder: Path, pending: list[int],
             bounds: list[tuple[int, int]], *, batch_size: int, actors: int, num_gpus: float | None,
             num_cpus: float | None) -> Iterator[tuple[int, int, float]]:
    """The pending shards as a dataset of one row each, mapped by a fixed pool of ``actors`` actors.

    Ray Data restarts an actor that dies and retries its shard (``max_restarts`` and
    ``max_task_retries`` default to -1 for actor pools); a shard written twice is written whole both
    times, under the same name. ``UNIME_*`` variables of this process reach the actors.
    """
    ray = require_ray()
    from ray.data import ActorPoolStrategy, DataContext

    started_here = not ray.is_initialized()
    if started_here:
        ray.init()  # RAY_ADDRESS, when set, names the cluster to join
    context = DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        resources = ray.cluster_resources()
        if num_gpus is None:
            num_gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        if num_cpus is None and not num_gpus:
            # CPU actors share the cluster's CPUs: each gets its share as its thread count. Ray Data's
            # default of 1 left one actor on one thread of a 2-core machine: 97 s for 600 rows against
            # 62 s with both (docs/performance.md).
            num_cpus = max(1, int(resources.get("CPU", 1) // actors))
        if started_here and not os.environ.get("RAY_ADDRESS"):
            # A Ray instance of this machine alone never grows: a pool larger than it would wait for ever.
            for name, each in (("GPU", num_gpus), ("CPU", 1 if num_cpus is None else num_cpus)):
                if each and actors * each > resources.get(name, 0):
                    raise ValueError(f"{actors} actors of {each:g} {name} each need {actors * each:g} {name}s, but "
                                     f"the local Ray instance has {resources.get(name, 0):g}: ask for fewer actors")
        items = []
        for shard in pending:
            first, end = bounds[shard]
            items.append({"shard": shard, "payload": _payload(rows.ids[first:end], rows.inputs[first:end], first)})
        environment = {key: value for key, value in os.environ.items() if key.startswith("UNIME_")}
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _ShardWorker,
            fn_constructor_kwargs={"model": model, "options": options, "folder": str(folder.resolve()),
                                   "batch_size": batch_size, "source": str(rows.path)},
            compute=ActorPoolStrategy(size=actors),
            batch_size=1,
            num_gpus=num_gpus,
            num_cpus=num_cpus,
            runtime_env={"env_vars": environment} if environment else None,
        )
        for result in dataset.iter_rows():
            if result["error"]:
                raise ValueError(str(result["error"]))
            yield int(result["shard"]), int(result["rows"]), float(result["seconds"])
    finally:
        context.enable_progress_bars = bars
        if started_here:
            ray.shutdown()


# ----------------------------------------------------------------------------- reading the output


def read_embeddings(output_dir: str | os.PathLike[str]) -> tuple[list[Any], np.ndarray]:
    """``(ids, matrix)`` of a finished bulk folder, in input order: ``matrix[i]`` (float32) is row i's
    embedding. Every shard the manifest lists must be there, whole, with the rows it must hold."""
    import numpy as np

    from unime.io.jsonl import read_json

    folder = Path(output_dir)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST}: not a folder of bulk embeddings")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not the manifest of a bulk embedding folder")
    ids: list[Any] = []
    parts: list[np.ndarray] = []
    width = None
    for shard in range(manifest["shards"]):
        first, end = _shard_bounds(shard, manifest["shard_rows"], manifest["rows"])
        table, reason = _read_shard(folder / shard_name(shard), end - first)
        if reason is not None:
            raise ValueError(f"{folder / shard_name(shard)}: {reason}: the job is not finished (run it again "
                             "to resume)")
        size = table.schema.field("embedding").type.list_size
        if width is not None and size != width:
            raise ValueError(f"{folder / shard_name(shard)}: embeddings of {size} values, but the shards before "
                             f"hold {width}")
        width = size
        ids.extend(table.column("id").to_pylist())
        values = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        parts.append(np.asarray(values, dtype=np.float32).reshape(-1, size))
    if manifest["ids"] == _ROW_INDEX and ids != list(range(manifest["rows"])):
        raise ValueError(f"{folder}: the shards' ids are not the rows' positions 0..{manifest['rows'] - 1}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{folder}: an id appears in more than one row")
    return ids, np.concatenate(parts)
