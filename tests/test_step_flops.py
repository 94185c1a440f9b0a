"""benchmarks/step_flops.py on a tiny FastVLM: one real stage-2 step, its FLOPs as FlopCounterMode
counts them inside the trainer's own step, and the JSON it writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import step_flops  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class InlineCounter(TrainerCallback):
    """FlopCounterMode around each real optimiser step (forward, backward, clipping, optimiser)."""

    def __init__(self) -> None:
        self.totals: list[int] = []
        self.counter = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.counter = step_flops.StepFlopCounter()
        self.counter.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        self.counter.__exit__(None, None, None)
        self.totals.append(self.counter.get_total_flops())


def test_step_flops_equal_flop_counter_of_the_real_step(tiny_model_factory, tmp_path, capsys):
    model = tiny_model_factory("fast_vlm")
    inline = InlineCounter()
    out = tmp_path / "flops.json"
    # 64 px is the tiny model's own size; 32 px swaps in build-default's processor for that size.
    result = step_flops.main(["--model", str(model), "--image-sizes", "64,32", "--steps", "1", "--warmup", "1",
                              "--batch-size", "4", "--mini-batch-size", "2", "--bf16", "false",
                              "--matmul-repeats", "2", "--output", str(out)], callbacks=[inline])
    row = result["rows"][0]
    # The replayed count is what FlopCounterMode saw in the trainer's own (timed) step.
    assert len(inline.totals) == 4
    assert row["flops"]["per_step"] == [inline.totals[1]]
    assert result["rows"][1]["flops"]["per_step"] == [inline.totals[3]]
    assert [r["image_tokens"] for r in result["rows"]] == [4, 1]
    assert result["rows"][1]["seq_len"]["query"] == row["seq_len"]["query"] - 3
    assert row["profile_seconds"]["wall"] > 0
    assert row["flops"]["median"] > 0
    assert sum(row["flops"]["by_category"].values()) == row["flops"]["median"]
    # The CPU attention kernels count (FlopCounterMode alone knows only the CUDA ones), and so do
    # the tower's convolutions and the adapter.
    for category in ("attention", "vision tower", "LoRA", "LLM linears"):
        assert row["flops"]["by_category"].get(category, 0) > 0, category
    saved = json.loads(out.read_text())
    assert {"cpu", "rows", "peak_matmul_gflops"} <= set(saved)
    fields = {"image_size", "image_tokens", "seq_len", "tokens_per_step", "step_seconds", "phase_seconds",
              "flops", "achieved_gflops", "matmul_gflops", "ratio", "step_dtype"}
    assert fields <= set(saved["rows"][0])
    assert saved["rows"][0]["image_tokens"] == 4 and saved["rows"][0]["step_dtype"] == "float32"
    assert saved["rows"][0]["achieved_gflops"] > 0 and saved["rows"][0]["matmul_gflops"]["float32"] > 0
    tokens = saved["rows"][0]["tokens_per_step"]
    assert 0 < tokens["real"] <= tokens["padded"]
    assert "| 64 | 4 |" in capsys.readouterr().out


def test_cpu_attention_is_counted():
    query = torch.randn(2, 3, 10, 8, requires_grad=True)
    key = torch.randn(2, 3, 12, 8, requires_grad=True)
    mask = torch.ones(2, 1, 10, 12, dtype=torch.bool)
    counter = step_flops.StepFlopCounter()
    with counter:
        torch.nn.functional.scaled_dot_product_attention(query, key, key, attn_mask=mask).sum().backward()
    matmul = 2 * (2 * 3) * 10 * 12 * 8  # one [10 x 8] @ [8 x 12]-sized product per batch row and head
    # forward: scores and output; backward: scores recomputed, then the gradients of scores, V, Q and K
    assert counter.get_total_flops() == (2 + 5) * matmul
    assert counter.categories() == {"attention": counter.get_total_flops()}
