"""Bulk embedding on Ray Data (``unime encode --engine ray``), on one local Ray instance of 2 CPUs shared
by the module: 2 actors give the embeddings of ``unime encode``'s .npy for JSON Lines, CSV and parquet
inputs, and shards laid out as the local engine's (same files, schema and ids); an actor killed mid-job is restarted and
its shard redone, every row once; a job whose driver was SIGKILLed mid-job, and then lost a shard
and had another damaged, is resumed embedding only the shards not whole, every row once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bulk_helpers import expected_embeddings, mixed_rows, save_images, shard_times, write_rows

from unime.bulk import FAULT_ENV, embed_to_parquet, read_embeddings, shard_name
from unime.cli import main

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance for the module: 2 CPUs, no dashboard, a small object store. Its workers get
    this checkout's src/ on their path, as the test process has it."""
    source = str(ROOT / "src")
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([source, previous] if previous else [source])
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200_000_000, log_to_driver=False)
    yield ray
    ray.shutdown()
    if previous is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = previous


@pytest.fixture(scope="module")
def model_dir(tiny_model_factory):
    return str(tiny_model_factory("qwen2_vl"))


@pytest.fixture
def folder(tmp_path, images):
    save_images(tmp_path, images)
    return tmp_path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_two_actors_equal_the_npy_of_unime_encode_and_the_local_engine(ray_cluster, model_dir, folder, suffix,
                                                                       capsys, one_thread):
    rows = mixed_rows(10, ids="str")
    path = write_rows(folder / f"rows{suffix}", rows)
    common = ["--model", model_dir, "--input", str(path), "--batch-size", "2", "--dtype", "float32"]
    assert main(["encode", *common, "--output", str(folder / "e.npy"), "--no-progress"]) == 0
    assert main(["encode", *common, "--output", str(folder / "ray"), "--engine", "ray", "--actors", "2",
                 "--shard-rows", "3"]) == 0
    printed = capsys.readouterr().out
    assert "10 rows in 4 shards of 3; 4 to embed (ray engine)" in printed
    assert sorted(line.split(":")[0] for line in printed.splitlines() if line.startswith("shard ")) == [
        "shard 1/4 done", "shard 2/4 done", "shard 3/4 done", "shard 4/4 done"]
    ids, matrix = read_embeddings(folder / "ray")
    assert ids == [row["id"] for row in rows]
    assert matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, np.load(folder / "e.npy"), atol=1e-5)
    if suffix == ".jsonl":  # the local engine writes the same files
        embed_to_parquet(model_dir, path, folder / "local", shard_rows=3, batch_size=2, dtype="float32",
                         progress=lambda line: None)
        import pyarrow.parquet as pq

        local_ids, local = read_embeddings(folder / "local")
        assert local_ids == ids
        assert sorted(shard_times(folder / "local")) == sorted(shard_times(folder / "ray"))
        for name in shard_times(folder / "ray"):
            assert pq.read_schema(folder / "ray" / name).equals(pq.read_schema(folder / "local" / name))
        np.testing.assert_allclose(local, matrix, atol=1e-6)


def test_an_actor_killed_mid_job_is_restarted_and_every_row_embedded_once(ray_cluster, model_dir, folder,
                                                                          monkeypatch, one_thread):
    rows = mixed_rows(8)
    path = write_rows(folder / "rows.jsonl", rows)
    marker = folder / "killed-once"
    monkeypatch.setenv(FAULT_ENV, f"1:{marker}")  # UNIME_* variables reach the actors
    result = embed_to_parquet(model_dir, path, folder / "out", engine="ray", actors=2, shard_rows=2, batch_size=2,
                              dtype="float32", progress=lambda line: None)
    assert marker.exists()  # the actor embedding shard 1 was SIGKILLed before renaming its file
    assert sorted(result.embedded) == [0, 1, 2, 3] and len(result.embedded) == 4
    assert list((folder / "out").glob(".part-00001.parquet.*.tmp"))  # the killed actor's, removed by a rerun
    ids, matrix = read_embeddings(folder / "out")
    assert ids == list(range(8))
    np.testing.assert_allclose(matrix, expected_embeddings(model_dir, folder, rows), atol=1e-5)


# A driver that joins the module's Ray instance and SIGKILLs itself once it has reported two finished
# shards, while its actors are embedding others.
_KILLED_DRIVER = """
import os, signal, sys
from unime.bulk import embed_to_parquet

def progress(line):
    print(line, flush=True)
    if line.startswith("shard 2/"):
        os.kill(os.getpid(), signal.SIGKILL)

embed_to_parquet(sys.argv[1], sys.argv[2], sys.argv[3], engine="ray", actors=2, shard_rows=2, batch_size=2,
                 dtype="float32", progress=progress)
"""


def test_a_killed_driver_resumes_redoing_only_missing_and_damaged_shards(ray_cluster, model_dir, folder, one_thread):
    rows = mixed_rows(23, ids="int")
    path = write_rows(folder / "rows.parquet", rows)
    out = folder / "out"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    killed = subprocess.run([sys.executable, "-c", _KILLED_DRIVER, model_dir, str(path), str(out)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-3000:]
    # Ray stops a dead driver's actors: once their CPUs are back, no shard appears behind the rerun's back.
    deadline = time.monotonic() + 60
    while ray_cluster.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    done = sorted(shard_times(out))
    assert 2 <= len(done) < 12, done  # killed mid-job
    # Then one finished shard is deleted and another truncated.
    (out / done[0]).unlink()
    (out / done[1]).write_bytes((out / done[1]).read_bytes()[:-100])
    kept = {name: mtime for name, mtime in shard_times(out).items() if name not in done[:2]}
    result = embed_to_parquet(model_dir, path, out, engine="ray", actors=2, shard_rows=2, batch_size=2,
                              dtype="float32", progress=lambda line: None)
    assert sorted(shard_name(shard) for shard in result.skipped) == sorted(kept)
    assert sorted(result.embedded + result.skipped) == list(range(12))  # each shard once
    assert {name: shard_times(out)[name] for name in kept} == kept
    assert not list(out.glob(".*.tmp"))
    ids, matrix = read_embeddings(out)
    assert ids == [row["id"] for row in rows]
    np.testing.assert_allclose(matrix, expected_embeddings(model_dir, folder, rows), atol=1e-5)


def test_a_bad_image_stops_the_ray_job_naming_the_rows(ray_cluster, model_dir, folder):
    (folder / "broken.png").write_bytes(b"not an image")
    path = write_rows(folder / "rows.jsonl", [{"text": "fine"}, {"text": "also fine"}, {"image": "broken.png"}])
    with pytest.raises(ValueError, match=r"rows.jsonl rows 2-2 \(part-00001.parquet; 'input i' below is row 2\+i\)"):
        embed_to_parquet(model_dir, path, folder / "out", engine="ray", actors=1, shard_rows=2, dtype="float32",
                         progress=lambda line: None)
