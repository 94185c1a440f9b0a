"""Two gloo processes share the MMEB encoding: each encodes about half, both get the full result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_fixtures import CountingModel, RandomModel, write_mmeb_suite
from process_helpers import run_gloo

from unime.evaluation.runner import RESULT_FILE, run_mmeb

pytestmark = pytest.mark.distributed


def _worker(rank: int, world: int, data_dir: str, image_dir: str, cache_dir: str, out_dir: str) -> None:
    counting = CountingModel(RandomModel())
    metrics = run_mmeb(counting, data_dir, image_dir, cache_dir, model_id="m", chunk_size=4)
    record = {"metrics": metrics, "encoded": counting.total}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))


def test_two_processes_split_the_encoding_and_agree_with_one(tmp_path):
    data_dir, image_dir = write_mmeb_suite(tmp_path)
    single = CountingModel(RandomModel())
    expected = run_mmeb(single, data_dir, image_dir, tmp_path / "single", model_id="m", chunk_size=4)

    args = (str(data_dir), str(image_dir), str(tmp_path / "shared"), str(tmp_path))
    run_gloo(_worker, args, world=2, method="spawn")

    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert records[0]["metrics"] == records[1]["metrics"] == expected
    encoded = [record["encoded"] for record in records]
    assert sum(encoded) == single.total
    # Each chunk of 4 is split 2 + 2 (a last odd chunk gives one rank one input more).
    assert abs(encoded[0] - encoded[1]) <= 3
    assert all(
        (tmp_path / "shared" / name / RESULT_FILE).is_file()
        for name in ("Custom", "ImageNet-1K", "MSCOCO_t2i")
    )

    # The cache the two processes wrote is complete: one process resumes it without encoding.
    again = CountingModel(RandomModel())
    assert run_mmeb(again, data_dir, image_dir, tmp_path / "shared", model_id="m", chunk_size=4) == expected
    assert again.total == 0
