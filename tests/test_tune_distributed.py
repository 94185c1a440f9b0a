"""Two gloo processes with half the batch each train exactly like one process with the whole batch,
on the model-level path of stage 2: MMEB-train rows through the training collator and
``model.preprocess``, a tiny Qwen2-VL with LoRA wrapped in DDP, and the hard-negative loss on the
GradCache engine (DDP ``no_sync`` while the mini-batches are replayed) with candidates gathered
across the ranks and mined from the global batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from process_helpers import run_gloo
from safetensors.torch import load_file, save_file

from unime.losses import HardNegativeInfoNCELoss
from unime.modeling import build_model
from unime.training.adapters import apply_tuning
from unime.training.mmeb_data import MMEBTrainCollator

ROWS = 8
WORLD = 2
IMAGE_QUERY = "<|image_1|>\nRepresent the given image with the following question: what is shown?\n"
IMAGE_TARGET = "<|image_1|>\nRepresent the given image.\n"


def _rows(image_dir: Path) -> list[dict]:
    """Training rows as the MMEB-train loader writes them; image and text rows alternate in every column.
    Rows 0 and 4, and rows 2 and 6, share their positive text (as classification labels repeat), one
    copy on each rank."""
    rows = []
    for i in range(ROWS):
        image = str(image_dir / f"{i}.png")
        other = str(image_dir / f"{(i + 3) % ROWS}.png")
        if i % 2 == 0:
            query, positive = {"text": IMAGE_QUERY, "image": image}, {"text": f"an answer about thing {i % 4}", "image": ""}
            negative = {"text": IMAGE_TARGET, "image": other}
        else:
            query, positive = {"text": f"Find me an image that matches: scene {i}", "image": ""}, {"text": IMAGE_TARGET, "image": image}
            negative = {"text": f"a wrong caption {i}", "image": ""}
        rows.append({"query": query, "positive": positive, "negative": negative, "row": f"dataset D, row {i}"})
    return rows


def _model(folder: Path):
    """Tiny Qwen2-VL in float64, joint mode, LoRA on every linear layer (as stage 2), non-zero B matrices."""
    model = build_model(str(folder))
    model.set_mode("joint")
    torch.manual_seed(0)
    apply_tuning(model, "lora", "all", lora_r=4, lora_alpha=8, lora_dropout=0.0, target_regex="all-linear")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    model.to(torch.float64)
    model.train()
    return model


def _step(model, loss_model, rows: list[dict]) -> dict[str, torch.Tensor]:
    """One cached forward + backward over ``rows``; loss, mined indices and the trainable gradients."""
    collator = MMEBTrainCollator(preprocess_fn=model.preprocess)
    batch = collator(rows)
    features = [{key[len(column) + 1:]: value for key, value in batch.items() if key.startswith(column + "_")}
                for column in ("query", "positive", "negative")]
    for feature in features:
        if "pixel_values" in feature:
            feature["pixel_values"] = feature["pixel_values"].to(torch.float64)
    loss_fn = HardNegativeInfoNCELoss(loss_model, temperature=0.05, num_hard_negatives=3,
                                      false_negative_margin=0.02, mini_batch_size=2)
    model.zero_grad(set_to_none=True)
    loss = loss_fn(features, batch["label"])
    loss.backward()
    result = {"loss": loss.detach().reshape(1), "indices": loss_fn.last_mining.indices,
              "dropped": loss_fn.last_mining.dropped, "duplicates": loss_fn.last_mining.duplicates}
    for name, param in model.named_parameters():
        if param.requires_grad:
            result[f"grad/{name}"] = param.grad.detach().clone()
    return result


def _worker(rank: int, world: int, model_dir: str, image_dir: str, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    model = _model(Path(model_dir))
    # As the trainer wraps it for scope "all": text-only mini-batches leave the vision adapters unused.
    ddp = DistributedDataParallel(model, find_unused_parameters=True)
    half = ROWS // world
    result = _step(model, ddp, _rows(Path(image_dir))[rank * half:(rank + 1) * half])
    save_file(result, str(Path(out_dir) / f"rank{rank}.safetensors"))


@pytest.fixture(scope="module")
def setup(tiny_model_factory, tmp_path_factory) -> tuple[Path, Path]:
    image_dir = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(ROWS):
        Image.fromarray(rng.integers(0, 255, (24 + 4 * (i % 3), 28, 3), dtype=np.uint8)).save(image_dir / f"{i}.png")
    return tiny_model_factory("qwen2_vl"), image_dir


@pytest.fixture(scope="module")
def two_processes(setup, tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    model_dir, image_dir = setup
    out_dir = tmp_path_factory.mktemp("ranks")
    # fork where it is safe (start_method): the children inherit the imported stack instead of
    # importing it again (10 to 20 s each).
    run_gloo(_worker, (str(model_dir), str(image_dir), str(out_dir)), world=WORLD)
    return [load_file(str(out_dir / f"rank{rank}.safetensors")) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def one_process(setup, two_processes) -> dict[str, torch.Tensor]:
    # Runs after the children: the parent's thread pool is never forked mid-use.
    model_dir, image_dir = setup
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model(model_dir)
        return _step(model, model, _rows(image_dir))
    finally:
        torch.set_num_threads(previous)


def _grads(result: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key[5:]: value for key, value in result.items() if key.startswith("grad/")}


@pytest.mark.distributed
def test_two_processes_mine_the_global_batch_like_one_process(two_processes, one_process):
    # Each rank mines from the gathered pool of 8 positives + 8 negatives, columns in global order.
    merged = torch.cat([rank["indices"] for rank in two_processes])
    assert torch.equal(merged, one_process["indices"])
    assert torch.equal(torch.cat([rank["dropped"] for rank in two_processes]), one_process["dropped"])
    # Copies of a positive on the other rank are found through the gathered content ids.
    assert torch.equal(torch.cat([rank["duplicates"] for rank in two_processes]), one_process["duplicates"])
    # Rows 0/4 and 2/6 share a positive text; odd row r's positive image is even row (r + 5) % 8's
    # explicit negative (pool column 8 + that row).
    assert one_process["duplicates"].nonzero().tolist() == [
        [0, 4], [1, 14], [2, 6], [3, 8], [4, 0], [5, 10], [6, 2], [7, 12]]
    assert one_process["indices"].shape == (ROWS, 3) and bool((one_process["indices"] >= ROWS).any())
    # Each rank's loss is its share of the global mean: their mean is the one-process loss.
    losses = [rank["loss"].item() for rank in two_processes]
    assert sum(losses) / WORLD == pytest.approx(one_process["loss"].item(), rel=1e-9)


@pytest.mark.distributed
def test_two_processes_get_the_gradients_of_one_process(two_processes, one_process):
    expected = _grads(one_process)
    assert len(expected) > 20
    scale = max(float(g.abs().max()) for g in expected.values())
    for rank in two_processes:
        grads = _grads(rank)
        assert grads.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(grads[name], value, rtol=1e-7, atol=1e-10 * scale, msg=name)
    vision = [name for name in expected if "visual" in name and "lora" in name]
    assert vision and any(float(expected[name].abs().max()) > 0 for name in vision)
