"""Load test of the embeddings server: dynamic batching against one-item-per-forward serving.

Starts the server in-process twice on loopback with the same model (once with dynamic batching,
once with ``max_batch_size=1``), drives each with the same concurrent clients for the same time,
and prints a markdown table of throughput and latency percentiles. In the same run it times the
bare forward pass, ``model.encode`` on batches of ``--max-batch-size`` items (and of 1) of the
same inputs, without HTTP: the limit the server's throughput approaches.

    python benchmarks/serve_load.py                       # a tiny random Qwen2-VL, 16 clients
    python benchmarks/serve_load.py --model PATH --duration 30 --workload image
"""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
import threading
import time
from dataclasses import dataclass

import httpx
import numpy as np
from PIL import Image

from unime.serve import BackgroundServer, ServeSettings, create_app

_WORDS = "red green small large cat dog house river photo of a the on near with under blue old".split()


@dataclass(frozen=True)
class RunResult:
    name: str
    requests: int
    items: int
    seconds: float
    latencies_ms: list[float]
    mean_batch: float
    errors: int

    @property
    def throughput(self) -> float:
        return self.items / self.seconds

    def row(self) -> str:
        p50, p99 = np.percentile(self.latencies_ms, [50, 99])
        return (
            f"| {self.name} | {self.requests} | {self.requests / self.seconds:.1f} | {self.throughput:.1f} "
            f"| {p50:.0f} | {p99:.0f} | {self.mean_batch:.1f} | {self.errors} |"
        )


def make_payloads(workload: str, count: int, items: int, seed: int = 0) -> list[dict]:
    """Distinct request bodies: short sentences, or small noise images as data URLs."""
    rng = np.random.default_rng(seed)
    payloads = []
    for _ in range(count):
        inputs: list = []
        for _ in range(items):
            if workload == "text":
                inputs.append(" ".join(rng.choice(_WORDS, size=int(rng.integers(4, 16)))))
            else:
                pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
                inputs.append(
                    {"image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}
                )
        payloads.append({"input": inputs})
    return payloads


def drive(
    url: str, payloads: list[dict], clients: int, duration_s: float
) -> tuple[list[float], int, int, float, int]:
    """Each client posts its share of payloads in a loop until the time is up."""
    latencies: list[float] = []
    counts = {"requests": 0, "items": 0, "errors": 0}
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + duration_s

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as session:
            i = index
            while time.monotonic() < stop_at:
                payload = payloads[i % len(payloads)]
                i += clients
                sent = time.perf_counter()
                response = session.post("/v1/embeddings", json=payload)
                elapsed = (time.perf_counter() - sent) * 1000
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                        counts["requests"] += 1
                        counts["items"] += len(payload["input"])
                    else:
                        counts["errors"] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Requests in flight at the deadline still finish; count the whole time they took.
    return latencies, counts["requests"], counts["items"], time.monotonic() - start, counts["errors"]


def decoded_inputs(payloads: list[dict]) -> list:
    """The payloads' items as ``model.encode`` takes them (the server decodes images to RGB)."""
    inputs = []
    for payload in payloads:
        for item in payload["input"]:
            if isinstance(item, str):
                inputs.append(item)
            else:
                data = base64.b64decode(item["image"].partition(",")[2])
                inputs.append(Image.open(io.BytesIO(data)).convert("RGB"))
    return inputs


def bare_forward(model, inputs: list, batch_size: int, duration_s: float) -> tuple[int, float]:
    """``model.encode`` on consecutive batches of ``batch_size`` inputs until the time is up;
    returns the items encoded and the seconds taken (the batch in progress at the deadline counts)."""
    start = time.monotonic()
    done = 0
    while time.monotonic() - start < duration_s:
        batch = [inputs[(done + i) % len(inputs)] for i in range(batch_size)]
        model.encode(batch, batch_size=batch_size, show_progress_bar=False)
        done += batch_size
    return done, time.monotonic() - start


def run(
    name: str, model, settings: ServeSettings, payloads: list[dict], args: argparse.Namespace
) -> RunResult:
    with BackgroundServer(create_app(model, settings)) as server:
        drive(server.url, payloads, args.clients, args.warmup)  # first-call costs, caches
        stats = server.app.state.batcher.stats
        batches_before, items_before = stats.batches, stats.items
        latencies, requests, items, seconds, errors = drive(server.url, payloads, args.clients, args.duration)
        mean_batch = (stats.items - items_before) / max(stats.batches - batches_before, 1)
    return RunResult(name, requests, items, seconds, latencies, mean_batch, errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="unime model to serve (default: a tiny random model of --family)")
    parser.add_argument("--family", default="qwen2_vl", help="tiny model family when --model is not given")
    parser.add_argument("--workload", choices=("text", "image"), default="text")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--items-per-request", type=int, default=1)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per configuration")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = parser.parse_args()

    import torch

    import unime

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from unime.models.tiny import make_tiny

            args.model = str(make_tiny(args.family, tmp))
            label = f"tiny random {args.family}"
        else:
            label = args.model
        model = unime.load(args.model)
    # The weights are in memory now; the temporary folder is no longer needed.
    payloads = make_payloads(args.workload, 8 * args.clients, args.items_per_request)
    common = {
        "model_name": "bench",
        "max_queued_items": 1 << 20,
        "max_items_per_request": args.items_per_request,
    }
    batched = run(
        f"dynamic batching (max {args.max_batch_size}, wait {args.batch_wait_ms:g} ms)",
        model,
        ServeSettings(max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, **common),
        payloads,
        args,
    )
    single = run(
        "batch size 1", model, ServeSettings(max_batch_size=1, batch_wait_ms=0.0, **common), payloads, args
    )
    inputs = decoded_inputs(payloads)
    bare_forward(model, inputs, args.max_batch_size, args.warmup)  # the same warm-up as the servers
    bare = {size: bare_forward(model, inputs, size, args.duration) for size in (args.max_batch_size, 1)}

    print(
        f"\nModel: {label}; workload: {args.workload}, {args.items_per_request} item(s) per request; "
        f"{args.clients} concurrent clients on loopback; {args.duration:g} s per configuration; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads.\n"
    )
    print("| serving | requests | requests/s | items/s | p50 ms | p99 ms | mean batch | errors |")
    print("|---|---|---|---|---|---|---|---|")
    print(batched.row())
    print(single.row())
    print(f"\nThroughput ratio (dynamic / batch size 1): {batched.throughput / single.throughput:.2f}x")
    print("\nThe bare forward on the same inputs, no HTTP (model.encode, one batch after another):\n")
    print("| forward | items | seconds | items/s | server items/s | server / bare |")
    print("|---|---|---|---|---|---|")
    for size, server in ((args.max_batch_size, batched), (1, single)):
        items, seconds = bare[size]
        rate = items / seconds
        print(f"| model.encode, batch size {size} | {items} | {seconds:.1f} | {rate:.1f} "
              f"| {server.throughput:.1f} ({server.name}) | {server.throughput / rate:.2f} |")
    print(f"\nThe dynamic-batching server reaches {batched.throughput / (bare[args.max_batch_size][0] / bare[args.max_batch_size][1]):.0%} "
          f"of the bare forward at its batch size {args.max_batch_size} (its mean batch was {batched.mean_batch:.1f}).")


if __name__ == "__main__":
    main()
