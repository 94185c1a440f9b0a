"""MMEB-V2 scoring parity with VLM2Vec-V2's code, on unime's embeddings of the miniature MMEB-V2.

What of the peer runs: ``RankingMetrics`` (``src/utils/eval_utils/metrics.py`` of a VLM2Vec checkout,
main branch), imported from a copy in a temporary folder (its unused ``pytrec_eval`` import is given
an empty module). It scores prediction lists built the way ``eval.py`` builds them: the candidate
embeddings keyed by name in the pool's order, ``numpy.argsort(-numpy.dot(queries, candidates.T))``
over the whole pool (``eval_type: global``) or over each query's ``cand_names`` (``local``), labels
and ``rel_scores`` per query. That glue is restated here (it sits inside ``eval.py``'s ``main``,
which loads the peer's model first); the peer's model classes, processors, collator and dataset
parsers are not run: they need the model hub and the peer's vendored backbones.

For each set the script prints unime's score and the peer's for the same embeddings, and the
largest difference; it exits 1 when a set differs by more than 1e-9 (for an NDCG set: from both the
peer's ``evaluate`` and its ``ndcg_at_k`` on the labels as given). One known difference is
reported rather than hidden: ``RankingMetrics.evaluate`` deduplicates a query's labels through a
Python ``set`` before pairing them with ``rel_scores``, so on graded qrels its NDCG depends on the
string hash order (``PYTHONHASHSEED``); unime pairs each label with its own score. The script
therefore also prints the peer's ``ndcg_at_k`` called on the labels as given.

    VLM2VEC_REPO=/path/to/VLM2Vec python benchmarks/mmeb_v2_parity.py --out runs/v2-parity \
        [--model MODEL_DIR] [--family qwen2_vl]

``VLM2VEC_REPO`` (or ``--peer``) is a checkout or a bare git repository of TIGER-AI-Lab/VLM2Vec.
Without ``--model`` a tiny random model of ``--family`` is built (``unime make-tiny``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np


def peer_ranking_metrics(repo: str, workdir: Path) -> type:
    relative = "src/utils/eval_utils/metrics.py"
    target = workdir / "peer" / "metrics.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    if (Path(repo) / relative).is_file():
        target.write_bytes((Path(repo) / relative).read_bytes())
    else:
        target.write_bytes(subprocess.run(["git", f"--git-dir={repo}", "show", f"HEAD:{relative}"],
                                          check=True, capture_output=True).stdout)
    sys.modules.setdefault("pytrec_eval", types.ModuleType("pytrec_eval"))
    sys.path.insert(0, str(target.parent))
    try:
        return importlib.import_module("metrics").RankingMetrics
    finally:
        sys.path.pop(0)


def peer_score(ranking_metrics: type, dataset, queries: np.ndarray, pool: np.ndarray) -> dict[str, float]:
    """eval.py's scoring on these embeddings (restated glue, the peer's RankingMetrics)."""
    cand_keys = list(dataset.candidates)
    cand = dict(zip(cand_keys, pool, strict=True))
    predictions = []
    if dataset.local is None:
        order = np.argsort(-np.dot(queries, np.stack([cand[k] for k in cand_keys]).T), axis=1)
        for row, labels, rel in zip(order, dataset.labels, dataset.relevance, strict=True):
            predictions.append({"prediction": [cand_keys[i] for i in row], "label": labels, "rel_scores": rel})
    else:
        for query, names, labels, rel in zip(queries, dataset.local, dataset.labels, dataset.relevance, strict=True):
            order = np.argsort(-np.dot(query, np.stack([cand[k] for k in names]).T))
            predictions.append({"prediction": [names[i] for i in order], "label": labels, "rel_scores": rel})
    scores = ranking_metrics(["hit", "ndcg"]).evaluate(predictions)
    direct = ranking_metrics(["ndcg"])
    scores["ndcg_linear@5 (labels as given)"] = float(np.mean([
        direct.ndcg_at_k(p["prediction"], p["label"], 5, p["rel_scores"], form="linear") for p in predictions]))
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", default=os.environ.get("VLM2VEC_REPO"), help="VLM2Vec checkout or bare git repo")
    parser.add_argument("--out", required=True, help="work folder (the miniature data, the model, the cache)")
    parser.add_argument("--model", help="unime or MLLM model folder (default: a tiny random --family model)")
    parser.add_argument("--family", default="qwen2_vl")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    if not args.peer:
        parser.error("--peer or VLM2VEC_REPO: a checkout or bare git repository of TIGER-AI-Lab/VLM2Vec")
    import unime
    from unime.evaluation import mmeb_v2 as v2
    from unime.evaluation.mmeb_v2_mini import build_miniature

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = build_miniature(out / "data") if not (out / "data" / "configs").is_dir() else {
        group: out / "data" / "configs" / f"{group}.yaml" for group in v2.GROUPS}
    model_dir = args.model
    if model_dir is None:
        from unime.models.tiny import make_tiny

        model_dir = str(out / f"tiny-{args.family}")
        if not Path(model_dir, "config.json").is_file():
            make_tiny(args.family, Path(model_dir))
    model = unime.load(model_dir, device="cpu", dtype=args.dtype)
    ranking_metrics = peer_ranking_metrics(args.peer, out)
    layout = v2.Layout.under(out / "data")
    rows, worst = [], 0.0
    for path in configs.values():
        for config in v2.read_config(path):
            dataset = v2.load_set(config, layout)
            with v2.using_v2_protocol(model):
                queries, pool = v2.set_embeddings(model, dataset, batch_size=4)
            ranked = v2.rank_names(queries, list(dataset.candidates), pool, dataset.local)
            ours = v2.set_metric(ranked, dataset.labels, dataset.relevance, dataset.metric)
            theirs = peer_score(ranking_metrics, dataset, queries, pool)
            peer_value = 100 * theirs[dataset.metric]
            difference = abs(ours - peer_value)
            row = {"set": config.name, "group": config.group, "metric": dataset.metric, "unime": ours,
                   "vlm2vec_v2": peer_value, "difference": difference}
            if dataset.metric.startswith("ndcg"):
                as_given = 100 * theirs["ndcg_linear@5 (labels as given)"]
                row["vlm2vec_v2 ndcg_at_k on labels as given"] = as_given
                # evaluate()'s set() pairing of graded labels is the one known difference (module docstring).
                row["difference"] = difference = min(difference, abs(ours - as_given))
            worst = max(worst, difference)
            rows.append(row)
            print(json.dumps(row))
    (out / "parity.json").write_text(json.dumps({"model": model_dir, "peer": args.peer, "sets": rows}, indent=2)
                                     + "\n", encoding="utf-8")
    print(f"largest difference: {worst:.3g} (percentage points); wrote {out / 'parity.json'}")
    return 0 if worst <= 1e-9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
