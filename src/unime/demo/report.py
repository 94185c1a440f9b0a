"""Tables and figures of ``unime demo``: the paper's layout, on the synthetic benchmark."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MMEB_COLUMNS = (("classification", "Class."), ("vqa", "VQA"), ("retrieval", "Retr."), ("grounding", "Ground."),
                ("IND", "IND"), ("OOD", "OOD"), ("overall", "Overall"))
MAIN_MODELS = ("base", "stage 1", "stage 2", "stage 1+2")
# The shipped default, evaluated on the photos as a reference row: the same recipe at full scale.
REFERENCE_MODEL = "unime-smol"
ABLATIONS = (("hard", "stage 1+2"), ("all (VLM2Vec)", "stage 1+2, all negatives"),
             ("random", "stage 1+2, random negatives"), ("easy", "stage 1+2, easy negatives"))
# The comparisons the demo's claims rest on: (label, model, the model it should beat).
MARGINS = (("stage 1+2 vs base", "stage 1+2", "base"), ("stage 1+2 vs stage 1", "stage 1+2", "stage 1"),
           ("stage 1+2 vs stage 2", "stage 1+2", "stage 2")) + tuple(
    (f"hard vs {label} negatives", "stage 1+2", name) for label, name in ABLATIONS[1:])
RECALLS = (1, 5, 10)
Ranks = Mapping[str, Mapping[str, np.ndarray]]  # {model: {"retrieval/<set>/i2t" or "/t2i": per-query ranks}}


def _cell(metrics: Mapping[str, float], key: str) -> str:
    value = metrics.get(key)
    return "-" if value is None or not np.isfinite(value) else f"{value:.1f}"


def _interval_cell(metrics: Mapping[str, float], key: str, ranks: Mapping[str, np.ndarray] | None) -> str:
    """A retrieval score with its 95% bootstrap interval over the queries, ``18.0 [12.0, 24.0]``
    (the score alone where the per-query ranks were not kept)."""
    from unime.evaluation.bootstrap import bootstrap_interval

    cell = _cell(metrics, key)
    queries, k = key.rsplit("_R@", 1)
    if cell == "-" or not ranks or queries not in ranks:
        return cell
    low, high = bootstrap_interval(np.asarray(ranks[queries]) < int(k))
    return f"{cell} [{low:.1f}, {high:.1f}]"


def _margins(ranks: Ranks, dataset: str) -> list[str]:
    """The margins table: per comparison and direction, the R@K difference and its paired 95%
    bootstrap interval, and which of the intervals exclude zero."""
    from unime.evaluation.bootstrap import paired_bootstrap_interval

    rows, missing = [], []
    for label, model, other in MARGINS:
        if not all(f"retrieval/{dataset}/i2t" in ranks.get(name, {}) for name in (model, other)):
            missing.append(label)
            continue
        for direction in ("i2t", "t2i"):
            key = f"retrieval/{dataset}/{direction}"
            cells, higher, lower = [], [], []
            for k in RECALLS:
                hits, other_hits = np.asarray(ranks[model][key]) < k, np.asarray(ranks[other][key]) < k
                low, high = paired_bootstrap_interval(hits, other_hits)
                difference = 100 * (hits.mean() - other_hits.mean()) + 0.0  # + 0.0: no "-0.0"
                cells.append(f"{difference:+.1f} [{low + 0.0:+.1f}, {high + 0.0:+.1f}]")
                if low > 0:
                    higher.append(f"R@{k}")
                elif high < 0:
                    lower.append(f"R@{k}")
            verdict = "; ".join(f"{side}: {', '.join(recalls)}" for side, recalls in
                                (("higher", higher), ("lower", lower)) if recalls)
            rows.append([label, direction.upper(), *cells, verdict or "none"])
    if not rows:
        return []
    title = "Flickr8k dev subset" if dataset == "flickr8k" else "synthetic retrieval set"
    lines = ["", f"## Margins on the {title}: paired bootstrap of the R@K differences", "",
             "First model minus second, in points, with the 95% interval of 1,000 paired resamples of the queries "
             "(each resample takes the same queries for both models; seed 0). Where the interval holds 0, the "
             "queries do not tell the two models apart; the last column names the recalls whose interval excludes 0, "
             "with the first model higher or lower.",
             ""]
    lines += _table(["Comparison", "Direction", "R@1", "R@5", "R@10", "Interval excludes 0"], rows)
    if missing:
        lines += ["", f"Not scored on this set for both models: {'; '.join(missing)}."]
    return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _training_summary(log: Path) -> tuple[float, float, float, float]:
    """Mean loss and gradient norm over the last half of a run, and the mean false-negative and
    duplicate rates over the whole run."""
    from unime.evaluation.plots import read_log_entries

    steps = [entry for entry in read_log_entries(log) if "loss" in entry]
    tail = steps[len(steps) // 2 :] or steps
    mean = lambda name, rows: float(np.mean([e[name] for e in rows if name in e])) if any(  # noqa: E731
        name in e for e in rows) else float("nan")
    return (mean("loss", tail), mean("grad_norm", tail), mean("false_negative_rate", steps),
            mean("duplicate_rate", steps))


def _ablation_table(results: Mapping[str, Mapping[str, float]], logs: Mapping[str, Path] | None,
                    ranks: Ranks) -> list[str]:
    """The stage-2 negatives table: training summary and scores of each negative type."""
    rows = []
    for label, name in ABLATIONS:
        if name not in results:
            continue
        loss = grad = fn_rate = dup_rate = float("nan")
        if logs and name in logs and logs[name].is_file():
            loss, grad, fn_rate, dup_rate = _training_summary(logs[name])
        rows.append([label, f"{loss:.3f}", f"{grad:.3g}", f"{100 * fn_rate:.1f}", f"{100 * dup_rate:.1f}",
                     _cell(results[name], "mmeb/overall/precision@1"),
                     _cell(results[name], "sugarcrepe/replace/accuracy"),
                     _cell(results[name], "sugarcrepe/swap/accuracy"),
                     _interval_cell(results[name], "retrieval/flickr8k/i2t_R@1", ranks.get(name)),
                     _interval_cell(results[name], "retrieval/flickr8k/t2i_R@1", ranks.get(name))])
    if not rows:
        return []
    header = ["Negatives", "loss (2nd half)", "grad norm (2nd half)", "false neg. dropped %", "copies excluded %",
              "MMEB overall", "Replace", "Swap", "Flickr8k I2T R@1", "T2I R@1"]
    # A benchmark the preset does not run on the ablations leaves its column out rather than blank
    # (the label and training columns always hold a value: "nan" when a run logged none).
    keep = [i for i in range(len(header)) if any(row[i] != "-" for row in rows)]
    return ["", "## Stage 2 negatives (from the stage-1 model)", ""] + _table(
        [header[i] for i in keep], [[row[i] for i in keep] for row in rows])


def _reference_label(model: str) -> str:
    return f"{model} (shipped, reference)" if model == REFERENCE_MODEL else model


def demo_markdown(preset: str, results: Mapping[str, Mapping[str, float]], figures: Mapping[str, str],
                  logs: Mapping[str, Path] | None = None, sizes: Mapping[str, int] | None = None, *,
                  ranks: Ranks | None = None) -> str:
    """The demo report: MMEB by meta-task and IND/OOD, retrieval, SugarCrepe, STS, and the negatives
    ablation; ``sizes`` (the synthetic benchmark's settings) adds how far one item moves a score, and
    ``ranks`` (per model, the per-query retrieval ranks) the bootstrap intervals of every R@K cell and
    the margins table of the comparisons the demo's claims rest on."""
    ranks = ranks or {}
    lines = [f"# UniME demo ({preset} preset, synthetic benchmark)", ""]
    if sizes:
        lines += [f"Scale: {sizes['eval_queries']} queries per MMEB data set (one query moves a data set's "
                  f"precision@1 by {100 / sizes['eval_queries']:.1f} points), {sizes['retrieval_images']} retrieval "
                  f"images (chance R@1 {100 / sizes['retrieval_images']:.1f}), {sizes['sugarcrepe_per_split']} items "
                  f"per SugarCrepe split (one item = {100 / sizes['sugarcrepe_per_split']:.1f} points, before "
                  "averaging the sub-splits). Differences of that size are noise.", ""]
    if ranks:
        lines += ["Retrieval cells give R@K and, in brackets, its 95% bootstrap interval over the queries "
                  "(1,000 resamples, seed 0); the margins table pairs the models.", ""]
    models = [m for m in MAIN_MODELS if m in results]
    lines += ["## MMEB-style precision@1", ""]
    lines += _table(["Model"] + [title for _, title in MMEB_COLUMNS],
                    [[m] + [_cell(results[m], f"mmeb/{key}/precision@1") for key, _ in MMEB_COLUMNS] for m in models])
    if any("retrieval/flickr8k/i2t_R@1" in results[m] for m in models):
        lines += ["", "## Real photos: Flickr8k dev subset (R@K) and its MMEB-style sets (precision@1)", ""]
        keys = [f"retrieval/flickr8k/{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
        rows = [m for m in (*models, REFERENCE_MODEL) if m in results]
        lines += _table(["Model", "I2T R@1", "R@5", "R@10", "T2I R@1", "R@5", "R@10", "MMEB i2t", "MMEB t2i"],
                        [[_reference_label(m)] + [_interval_cell(results[m], key, ranks.get(m)) for key in keys]
                         + [_cell(results[m], f"mmeb/Flickr8k_{d}/precision@1") for d in ("i2t", "t2i")]
                         for m in rows])
        if REFERENCE_MODEL in results:
            lines += ["", "The last row is the shipped default (`unime build-default`): the same base after stage 1 "
                      "on 16,000 sentences and stage 2 on every Flickr8k train photo for three epochs "
                      "(docs/default-model.md), where the demo trains for minutes: what more training gives."]
    lines += ["", "## Zero-shot retrieval (R@1), compositionality (SugarCrepe accuracy), STS (Spearman)", ""]
    lines += _table(
        ["Model", "I2T", "T2I", "Replace", "Swap", "Add", "STS"],
        [[m, _interval_cell(results[m], "retrieval/synth/i2t_R@1", ranks.get(m)),
          _interval_cell(results[m], "retrieval/synth/t2i_R@1", ranks.get(m)),
          _cell(results[m], "sugarcrepe/replace/accuracy"), _cell(results[m], "sugarcrepe/swap/accuracy"),
          _cell(results[m], "sugarcrepe/add/accuracy"), _cell(results[m], "sts/synth/spearman")] for m in models],
    )
    lines += _ablation_table(results, logs, ranks)
    photos = any("retrieval/flickr8k/i2t" in sets for sets in ranks.values())
    lines += _margins(ranks, "flickr8k" if photos else "synth")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{title}]({path})" for title, path in figures.items()]
    return "\n".join(lines) + "\n"


def demo_figures(out: Path, models: Mapping[str, Path], matrices: Sequence[tuple[str, np.ndarray]],
                 next_tokens: Any = None) -> dict[str, str]:
    """The cross-modal similarity matrices (computed while evaluating), the negative-type training
    curves and, given ``(images, [(model, top-k per image)])``, the next-token analysis, as PNG files in
    ``out``; returns {title: file name}."""
    from unime.evaluation.plots import plot_similarity, plot_training, read_training_log
    from unime.training.stage import TRAINING_LOG

    figures: dict[str, str] = {}
    if next_tokens is not None:
        from unime.evaluation.next_token import plot_next_tokens

        images, topk = next_tokens
        plot_next_tokens(topk, images, out / "next_tokens.png")
        figures["Top next tokens after the image prompt (the one-word summary the embedding reads)"] = "next_tokens.png"
    if matrices:
        plot_similarity(list(matrices), out / "similarity.png")
        figures["Cross-modal cosine similarity of image-caption pairs"] = "similarity.png"
    logs = [read_training_log(models[name] / TRAINING_LOG, label)
            for label, name in ABLATIONS if name in models and (models[name] / TRAINING_LOG).is_file()]
    if logs:
        plot_training(logs, out / "negatives.png")
        figures["Stage-2 loss and gradient norm by negative type"] = "negatives.png"
    return figures
