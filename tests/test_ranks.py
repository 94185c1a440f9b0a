"""unime.environment.rank_and_world_size: the initialised process group, else the launcher's RANK and
WORLD_SIZE, else (0, 1); and the callers that read it before the group exists or only from the group."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from unime.environment import rank_and_world_size


@pytest.fixture
def no_launcher(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not dist.is_initialized()
    return monkeypatch


def test_alone_without_a_launcher_it_is_rank_0_of_1(no_launcher):
    assert rank_and_world_size() == (0, 1)
    assert rank_and_world_size(environment=False) == (0, 1)


def test_before_the_group_exists_the_launchers_variables_are_read(no_launcher):
    no_launcher.setenv("RANK", "3")
    no_launcher.setenv("WORLD_SIZE", "4")
    assert rank_and_world_size() == (3, 4)
    # Code about to run a collective has no group to exchange with yet: it works alone.
    assert rank_and_world_size(environment=False) == (0, 1)


def test_only_world_size_set_means_rank_0(no_launcher):
    no_launcher.setenv("WORLD_SIZE", "2")
    assert rank_and_world_size() == (0, 2)


def test_an_initialised_group_wins_over_the_variables(no_launcher, tmp_path):
    no_launcher.setenv("RANK", "5")
    no_launcher.setenv("WORLD_SIZE", "8")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        assert rank_and_world_size() == (0, 1)
        assert rank_and_world_size(environment=False) == (0, 1)
    finally:
        dist.destroy_process_group()


def test_the_callers_read_it_with_their_own_rules(no_launcher, tmp_path):
    from unime.evaluation.encoding import distributed_world, is_main_process
    from unime.losses.distributed import world_size
    from unime.training.recipes import TuneRecipe
    from unime.training.trainer import training_settings

    no_launcher.setenv("RANK", "1")
    no_launcher.setenv("WORLD_SIZE", "2")
    # Evaluation and the losses exchange through the group: without one they work alone.
    assert distributed_world() == (0, 1) and is_main_process() and world_size() == 1
    # Training splits its batch over the launched processes before the trainer creates the group.
    recipe = TuneRecipe(model="m", data="d", output_dir=str(tmp_path / "out"), batch_size=6, bf16=False)
    assert training_settings(recipe)["per_device_train_batch_size"] == 3
    with pytest.raises(ValueError, match="does not split over 4 processes"):
        no_launcher.setenv("WORLD_SIZE", "4")
        training_settings(recipe)
