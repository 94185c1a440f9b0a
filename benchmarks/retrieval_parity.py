"""Retrieval and SugarCrepe parity against UniME's own ``self_evaluate`` code, same model, same photos.

UniME's zero-shot retrieval numbers (Flickr30K, COCO, ShareGPT4V, Urban1K) come from
``self_evaluate/retrieval_self.py`` of deepglint/UniME. This script imports that code's own
functions (``emb_data``, ``recall_at_k``, ``batchify``) in a second Python environment, runs them on
a LLaVA-1.6 model folder and the shipped Flickr8k photos (5 captions each), and compares their
embeddings and R@1/5/10 with unime's (``unime.evaluation.retrieval``) on the same images and
captions. Likewise for SugarCrepe: ``sugar_crepe_self.py``'s ``text_retrieval_llm`` decides each item
(image, caption, negative caption; here the photo's first caption against its words in reverse
order, a swap-style negative), one item a batch as its ``evaluate_llm`` runs it, against
``unime.evaluation.sugarcrepe``. The file does not compile as published (line 6,
``os.environ["https_proxy"] = "``, an unterminated string): that line is dropped before it runs.

Adjustments that let the official code run here, none of its protocol: the model is loaded on the
CPU in float32 (the script asks for CUDA and float16), the processor is the model folder's own (the
script downloads ``llava-hf/llava-v1.6-mistral-7b-hf``'s), the data set is built from local
photos in the layout its ``ir`` function reads (``img``: PIL images, ``caption``: a list of 5), and
SugarCrepe's positional ``transform(text, images)`` calls are passed by name (transformers 5 reads a
first positional argument as images).

    python benchmarks/retrieval_parity.py --unime-code UNIME_CHECKOUT --python PEER_VENV/bin/python \
        --model TINY_LLAVA_NEXT --out runs/retrieval-parity --images 100

``UNIME_CHECKOUT`` is a checkout of deepglint/UniME (commit d565584); ``PEER_VENV`` an environment
with torch, transformers, datasets and accelerate (the VLM2Vec peer's venv serves).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "src" / "unime" / "assets" / "flickr8k"

OFFICIAL = r"""
import json, sys, time
import numpy as np, torch
sys.path.insert(0, ".")
from PIL import Image
from datasets import Dataset
from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor
from self_evaluate.utils.utils import batchify, emb_data, recall_at_k
model_dir, rows_json, out = sys.argv[1:4]
rows = json.load(open(rows_json))
start = time.perf_counter()
model = LlavaNextForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
transform = LlavaNextProcessor.from_pretrained(model_dir)
transform.tokenizer.padding_side = "left"   # as init_model_and_transform
transform.tokenizer.padding = True
dataset = Dataset.from_dict({"img": [Image.open(r["image"]).convert("RGB") for r in rows],
                             "caption": [r["captions"] for r in rows]})
img_prompt = "[INST] <image>\nSummary above image in one word: [/INST]"
text_prompt = "[INST] <sent>\nSummary above sentence in one word: [/INST]"
text_embs = emb_data(model, transform, dataset, "cpu", MODEL_TYPE="llava_16", dataset_name="flickr30k",
                     emb_type="text", prompt=text_prompt, bsz=4)
img_embs = emb_data(model, transform, dataset, "cpu", MODEL_TYPE="llava_16", dataset_name="flickr30k",
                    emb_type="image", prompt=img_prompt, bsz=4)
texts_image_index = [i // 5 for i in range(img_embs.shape[0] * 5)]
scores = text_embs @ img_embs.t()
positive_pairs = torch.zeros_like(scores, dtype=bool)
positive_pairs[torch.arange(len(scores)), texts_image_index] = True
metrics = {}
for k in (1, 5, 10):
    metrics[f"t2i_R@{k}"] = 100 * (batchify(recall_at_k, scores, positive_pairs, 64, "cpu", k=k) > 0).float().mean().item()
    metrics[f"i2t_R@{k}"] = 100 * (batchify(recall_at_k, scores.T, positive_pairs.T, 64, "cpu", k=k) > 0).float().mean().item()
np.save(out + "/text.npy", text_embs.numpy()); np.save(out + "/image.npy", img_embs.numpy())
# SugarCrepe: the official per-item decision, one item a batch (evaluate_llm's default bsz=1).
source = open("self_evaluate/sugar_crepe_self.py").read().replace('os.environ["https_proxy"] = "\n', "")
namespace = {"__name__": "sugar_crepe_self"}
exec(compile(source, "self_evaluate/sugar_crepe_self.py", "exec"), namespace)
namespace["device"] = "cpu"  # process_text reads the module's global device, set by its main


class PositionalText:
    # transformers 4.4x processors took (text, images) positionally as this file calls them;
    # transformers 5 reads the first positional argument as images.
    def __init__(self, processor):
        self.processor, self.tokenizer = processor, processor.tokenizer

    def __call__(self, *args, **kwargs):
        names = ["text", "images"]
        for value in args:
            kwargs[names.pop(0)] = value
        return self.processor(**kwargs)


correct = 0
for r in rows:
    correct += namespace["text_retrieval_llm"]([r["captions"][0]], [r["negative"]],
                                               [Image.open(r["image"]).convert("RGB")], model, PositionalText(transform),
                                               "llava_16", device="cpu")
metrics["sugarcrepe_accuracy"] = 100 * correct / len(rows)
json.dump({"metrics": metrics, "wall_s": time.perf_counter() - start}, open(out + "/official.json", "w"))
"""


def photo_rows(photos: Path, images: int) -> list[dict]:
    groups: dict[str, list[str]] = {}
    with open(photos / "dev.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            groups.setdefault(row["image"], []).append(row["caption"])
    names = [name for name in groups if len(groups[name]) == 5][:images]
    return [{"image": str(photos / "images" / name), "captions": groups[name],
             "negative": " ".join(reversed(groups[name][0].split()))} for name in names]


def run_unime(model_dir: str, rows: list[dict], out: Path) -> dict:
    import unime
    from unime.evaluation.retrieval import RetrievalDataset, recall_from_ranks, retrieval_ranks

    start = time.perf_counter()
    model = unime.load(model_dir, dtype="float32")
    dataset = RetrievalDataset(name="flickr8k", images=[r["image"] for r in rows],
                               captions=[c for r in rows for c in r["captions"]],
                               caption_image=[i for i, r in enumerate(rows) for _ in r["captions"]])
    text = model.encode(dataset.captions, batch_size=12)
    image = model.encode([{"image": path} for path in dataset.images], batch_size=4)
    metrics = recall_from_ranks(retrieval_ranks(model, dataset, batch_size=4))
    from unime.evaluation.sugarcrepe import SugarCrepeSplit, evaluate_sugarcrepe

    split = SugarCrepeSplit("swap_obj", [r["image"] for r in rows], [r["captions"][0] for r in rows],
                            [r["negative"] for r in rows])
    metrics["sugarcrepe_accuracy"] = evaluate_sugarcrepe(model, [split], batch_size=4)["sugarcrepe/swap_obj/accuracy"]
    np.save(out / "unime_text.npy", text)
    np.save(out / "unime_image.npy", image)
    return {"metrics": metrics, "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unime-code", required=True, type=Path, help="a checkout of deepglint/UniME")
    parser.add_argument("--python", required=True, help="the interpreter that runs the official code")
    parser.add_argument("--model", required=True, help="a LLaVA-1.6 model folder (e.g. unime make-tiny --family llava_next)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="folder with dev.csv and images/")
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = photo_rows(args.photos, args.images)
    spec = args.out / "rows.json"
    spec.write_text(json.dumps(rows))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    done = subprocess.run([args.python, "-c", OFFICIAL, str(Path(args.model).resolve()), str(spec.resolve()),
                           str(args.out.resolve())], cwd=args.unime_code, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the official code failed:\n{done.stderr[-3000:]}")
    official = json.loads((args.out / "official.json").read_text())
    ours = run_unime(args.model, rows, args.out)
    text_diff = float(np.abs(np.load(args.out / "text.npy") - np.load(args.out / "unime_text.npy")).max())
    image_diff = float(np.abs(np.load(args.out / "image.npy") - np.load(args.out / "unime_image.npy")).max())
    print(f"{len(rows)} photos, {5 * len(rows)} captions, float32")
    print(f"max abs embedding difference: captions {text_diff:.2e}, images {image_diff:.2e}")
    print("| metric | UniME self_evaluate | unime |")
    print("|---|---|---|")
    for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "sugarcrepe_accuracy"):
        print(f"| {key} | {official['metrics'][key]:.2f} | {ours['metrics'][key]:.2f} |")
    report = {"images": len(rows), "official": official, "unime": ours, "max_abs_diff": {"text": text_diff,
                                                                                        "image": image_diff}}
    (args.out / "parity.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
