"""run_gloo, the launcher of the multi-process tests: a rank that fails or hangs fails the test, with
its traceback, in seconds, and leaves no process behind."""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
from process_helpers import run_gloo
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

pytestmark = pytest.mark.distributed


def _all_reduce_ranks(rank: int, world: int, out: str) -> None:
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    torch.save(total, f"{out}/rank{rank}.pt")


def _only_rank_zero_waits(rank: int, world: int) -> None:
    if rank == 0:
        dist.barrier()


def _rank_one_hangs(rank: int, world: int) -> None:
    if rank == 1:
        time.sleep(3600)


def test_the_ranks_share_one_group(tmp_path):
    run_gloo(_all_reduce_ranks, (str(tmp_path),), world=2)
    assert [torch.load(tmp_path / f"rank{rank}.pt").item() for rank in range(2)] == [3.0, 3.0]


def test_a_collective_missing_a_rank_fails_with_its_traceback():
    start = time.monotonic()
    with pytest.raises(ProcessRaisedException, match="barrier"):
        run_gloo(_only_rank_zero_waits, world=2, gloo_timeout_s=5)
    assert time.monotonic() - start < 60


def test_a_hung_rank_prints_its_stack_and_fails_the_caller(capfd):
    start = time.monotonic()
    with pytest.raises(ProcessExitedException, match="exit code 1"):
        run_gloo(_rank_one_hangs, world=2, rank_timeout_s=5)
    assert time.monotonic() - start < 60
    assert "_rank_one_hangs" in capfd.readouterr().err


def test_run_torchrun_launches_again_after_a_rank_abort_and_says_so(tmp_path):
    """Rank 1 aborts on the first launch only (a marker file): the launch is repeated, with a warning
    carrying the first one's output; any other failure is not repeated."""
    import os

    from process_helpers import run_torchrun

    marker = tmp_path / "aborted-once"
    script = tmp_path / "rank.py"
    script.write_text(
        "import os, sys\n"
        f"marker = {str(marker)!r}\n"
        "if os.environ['RANK'] == '1' and not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        "    os.abort()\n"
        "sys.exit(int(sys.argv[1]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with pytest.warns(RuntimeWarning, match="died of SIGABRT; launched again"):
        done = run_torchrun([str(script), "0"], env=env, timeout=120)
    assert done.returncode == 0 and marker.exists()
    failed = run_torchrun([str(script), "3"], env=env, timeout=120)  # a plain failure: returned as it is
    assert failed.returncode != 0
