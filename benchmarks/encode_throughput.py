"""Throughput of `encode` vs the bare model forward on the same pre-built batches.

The difference is the pipeline's overhead: prompt rendering, image conversion, the processor,
length sorting and the copy back to numpy. One run, tiny Qwen2-VL, text and image inputs.

    python benchmarks/encode_throughput.py [--items 512] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from PIL import Image

import unime
from unime.models.tiny import make_tiny


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def sample_inputs(text_count: int, image_count: int, image_size: int, seed: int = 0) -> dict[str, list]:
    """Random texts (4 to 24 words) and random RGB images, by input kind."""
    rng = np.random.default_rng(seed)
    words = "the a red blue small large circle square dog cat runs sits on under left of near".split()
    texts = [" ".join(rng.choice(words, size=rng.integers(4, 24))) for _ in range(text_count)]
    images = [
        Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8))
        for _ in range(image_count)
    ]
    return {"text": texts, "image": images}


def prebuilt_batches(model, inputs: list, batch_size: int, kind: str) -> list[dict]:
    """The batches ``encode`` would build (same length-sorted order), preprocessed and on the model's device."""
    from sentence_transformers.util import batch_to_device

    order = np.argsort([-len(t) for t in inputs]) if kind == "text" else np.arange(len(inputs))
    return [
        batch_to_device(model.preprocess([inputs[i] for i in order[s : s + batch_size]]), model.device)
        for s in range(0, len(inputs), batch_size)
    ]


def time_encode(model, inputs: list, batch_size: int, repeats: int, kind: str) -> dict[str, float]:
    """Best-of-``repeats`` seconds of the bare forward (prebuilt batches, embeddings copied back, as
    ``encode`` returns them) and of ``encode`` on the same inputs, and the mean tokens per item."""
    batches = prebuilt_batches(model, inputs, batch_size, kind)

    def bare() -> None:
        with torch.inference_mode():
            for features in batches:
                model(dict(features))["sentence_embedding"].float().cpu()

    def pipeline() -> None:
        model.encode(inputs, batch_size=batch_size)

    tokens = sum(int(f["attention_mask"].sum()) for f in batches if "attention_mask" in f)
    return {"items": len(inputs), "bare_s": _time(bare, repeats), "encode_s": _time(pipeline, repeats),
            "tokens_per_item": tokens / len(inputs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--model", default=None, help="a model folder instead of a fresh tiny Qwen2-VL")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time encode under CPU bf16 autocast (as unime demo evaluates) and its drift")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sampled = sample_inputs(args.items, args.items, args.image_size)
    with tempfile.TemporaryDirectory() as folder:
        path = args.model or str(make_tiny("qwen2_vl", folder, image_size=args.image_size))
        model = unime.load(path)
        model.eval()
        rows = []
        for name, inputs in sampled.items():
            timed = time_encode(model, inputs, args.batch_size, args.repeats, name)
            t_bare, t_pipe = timed["bare_s"], timed["encode_s"]
            row = [name, len(inputs) / t_bare, len(inputs) / t_pipe, t_bare / t_pipe]
            if args.bf16:
                def autocast(inputs: list = inputs) -> None:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        model.encode(inputs, batch_size=args.batch_size)

                t_bf16 = _time(autocast, args.repeats)
                full = model.encode(inputs, batch_size=args.batch_size)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    half = model.encode(inputs, batch_size=args.batch_size)
                cosine = float(np.mean(np.sum(full * half, axis=1)))
                row += [len(inputs) / t_bf16, t_pipe / t_bf16, cosine]
            rows.append(tuple(row))
    print(
        f"{args.model or 'tiny qwen2_vl'}, {args.items} items, batch {args.batch_size}, best of {args.repeats}, "
        f"{torch.get_num_threads()} threads\n"
    )
    header = "| input | bare forward (items/s) | unime encode (items/s) | encode / bare |"
    if args.bf16:
        header += " encode, bf16 autocast (items/s) | bf16 speed-up | cosine(fp32, bf16) |"
    print(header)
    print("|" + "---|" * header.count(" |"))
    for name, bare_rate, pipe_rate, ratio, *bf16 in rows:
        line = f"| {name} | {bare_rate:.1f} | {pipe_rate:.1f} | {ratio:.2f} |"
        if bf16:
            line += f" {bf16[0]:.1f} | {bf16[1]:.2f} | {bf16[2]:.4f} |"
        print(line)


if __name__ == "__main__":
    main()
