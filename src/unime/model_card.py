"""The README model card written beside a saved UniME model."""

from __future__ import annotations

import json
from typing import Any

from unime.config import UniMEConfig

_STAGE_TEXT = {
    "distill": "stage 1, textual discriminative knowledge distillation (the language model alone, text only, "
    "KL between in-batch similarity distributions of student and teacher)",
    "tune": "stage 2, hard-negative enhanced instruction tuning (false-negative filtering, top-k hard "
    "in-batch negatives, InfoNCE)",
}


def render_model_card(config: UniMEConfig, info: dict[str, Any], model_id: str = "path/to/this/model") -> str:
    """A markdown card: base model, stages, data, recipe, results, and how to load the model.

    ``info`` may hold ``base_model``, ``datasets`` (list), ``recipe`` (dict) and ``results``
    (flat dict of metric -> value); missing entries are left out, never invented.
    """
    lines = ["---", "library_name: sentence-transformers", "tags:", "- unime", "- sentence-transformers",
             "- multimodal-embedding", "pipeline_tag: feature-extraction"]
    if info.get("base_model"):
        lines.append(f"base_model: {info['base_model']}")
    lines += ["---", "", "# UniME embedding model", ""]
    lines.append(
        f"A universal multimodal embedding model ({config.family} backbone) made with "
        "[unime](https://arxiv.org/abs/2504.17432)'s recipe: texts, images and interleaved inputs "
        "map to one L2-normalised vector space (last-token pooling of a one-word summary prompt)."
    )
    lines += ["", "## Training", ""]
    if info.get("base_model"):
        lines.append(f"- Base model: `{info['base_model']}`")
    if config.stages:
        for stage in config.stages:
            lines.append(f"- {_STAGE_TEXT.get(stage, stage)}")
    else:
        lines.append("- No UniME training stage was applied (zero-shot prompt-based embeddings).")
    for dataset in info.get("datasets", []):
        lines.append(f"- Data: {dataset}")
    if info.get("recipe"):
        lines += ["", "Recipe:", "", "```json", json.dumps(info["recipe"], indent=2, sort_keys=True, default=str),
                  "```"]
    if info.get("results"):
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in sorted(info["results"].items())]
    lines += [
        "", "## Embedding settings", "",
        f"- mode for text + image inputs: `{config.mode}`; padding side: `{config.padding_side}`; "
        f"pooling: `{config.pooling}`; normalised: `{config.normalize}`",
        f"- text prompt: `{config.text_prompt!r}`",
        f"- image prompt: `{config.image_prompt!r}`",
        f"- joint prompt: `{config.joint_prompt!r}`",
        *([f"- instruction: in the prompts' `<instruction>` slot; for an input given none: "
           f"`{config.default_instruction!r}`"] if config.default_instruction is not None else []),
        "", "## Usage", "", "With unime:", "", "```python", "import unime", "",
        f'model = unime.load("{model_id}")',
        'embeddings = model.encode(["a photo of a cat", {"image": "cat.jpg"},',
        '                           {"text": "What animal is this?", "image": "cat.jpg"}])',
        "```", "", "From the shell: `unime encode --model " + model_id + " --input rows.jsonl --output emb.npy`.",
        "", "With sentence-transformers (unime installed; its input module is imported, hence the flag):", "",
        "```python", "from sentence_transformers import SentenceTransformer", "",
        f'model = SentenceTransformer("{model_id}", trust_remote_code=True)', "```", "",
    ]
    return "\n".join(lines)
