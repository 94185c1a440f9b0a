"""Index build time, query latency and recall: exact (flat) against HNSW and IVF, side by side.

    python benchmarks/index_search.py                       # 10,000 and 100,000 vectors of 576 values
    python benchmarks/index_search.py --sizes 10000 --queries 200

Vectors are unit rows drawn around 1,000 random centres (embeddings are clustered; uniform random
vectors would be the hardest case for an approximate index and unlike any model's output), 576 values
as the seeing default gives. For each size and index type: the build time (``unime.index``'s own
builder, as ``unime index`` runs it), the median and 95th-percentile latency of one query at a time
(as the server searches), and recall@10 against the exact index. The exact index also gets the obvious
alternative, a NumPy matrix product with argpartition, to show what FAISS adds. The table feeds
docs/performance.md ("Index and search") and the ``auto`` rule of ``unime.index``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from unime.index import SearchIndex, make_faiss_index


def clustered(count: int, width: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rows = centres[rng.integers(0, len(centres), count)] + rng.standard_normal((count, width)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def time_queries(search, queries: np.ndarray) -> tuple[float, float, list[list[int]]]:
    latencies, found = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(search(query[None, :]))
        latencies.append(time.perf_counter() - started)
    return float(np.median(latencies)) * 1e3, float(np.percentile(latencies, 95)) * 1e3, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, args.width)).astype(np.float32) * 1.5
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads")
    print("| vectors | index | build (s) | query p50 (ms) | query p95 (ms) | recall@10 vs exact |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        vectors = clustered(size, args.width, centres, rng)
        queries = clustered(args.queries, args.width, centres, rng)
        items = [{"id": str(i), "kind": "text"} for i in range(size)]
        exact: list[list[int]] | None = None

        def numpy_search(query: np.ndarray, vectors: np.ndarray = vectors) -> list[int]:
            scores = (query @ vectors.T)[0]
            top = np.argpartition(-scores, args.k)[: args.k]
            return top[np.argsort(-scores[top])].tolist()

        p50, p95, found = time_queries(numpy_search, queries)
        exact = found
        print(f"| {size:,} | numpy matmul | - | {p50:.2f} | {p95:.2f} | 1.000 |")
        for kind in ("flat", "hnsw", "ivf"):
            started = time.perf_counter()
            index, params = make_faiss_index(vectors, kind)
            build = time.perf_counter() - started
            # The default search setting, then a wider one (more of the graph or more cells visited).
            settings = {"flat": [{}], "hnsw": [{"ef_search": params.get("ef_search")}, {"ef_search": 256}],
                        "ivf": [{"nprobe": params.get("nprobe")}, {"nprobe": 4 * params.get("nprobe", 1)}]}[kind]
            for number, setting in enumerate(settings):
                chosen = {**params, **setting}
                manifest = {"dimensions": args.width, "index": {"kind": kind, **chosen}, "model": "benchmark"}
                searchable = SearchIndex(None, manifest, index, items)  # type: ignore[arg-type]

                def search(query: np.ndarray, searchable: SearchIndex = searchable) -> list[int]:
                    return [hit.position for hit in searchable.search(query, k=args.k)[0]]

                p50, p95, found = time_queries(search, queries)
                recall = np.mean([len(set(f) & set(e)) / args.k for f, e in zip(found, exact, strict=True)])
                label = kind + {"flat": "", "hnsw": f" (M {chosen.get('M')}, ef {chosen.get('ef_search')})",
                                "ivf": f" (nlist {chosen.get('nlist')}, nprobe {chosen.get('nprobe')})"}[kind]
                shown = f"{build:.2f}" if number == 0 else "same"
                print(f"| {size:,} | {label} | {shown} | {p50:.2f} | {p95:.2f} | {recall:.3f} |", flush=True)

if __name__ == "__main__":
    main()
