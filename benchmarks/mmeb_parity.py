"""MMEB parity and speed against VLM2Vec v1's own ``eval.py``, on the same model and the same rows.

UniME's MMEB numbers came from VLM2Vec v1 ``eval.py`` (branch ``v1``). This script runs that code
and ``unime eval mmeb`` (protocol ``vlm2vec``) on MMEB-style sets built from real photos, one after
the other, and prints per set the largest candidate-score difference, the share of queries whose
best candidate agrees, both precision@1 figures and both wall times.

The sets (``--sets``), in the MMEB-eval layout (one folder of parquet per set, the positive first):

- ``cls``: classification: each photo with the instruction, 100 one-word labels as candidates;
- ``vqa``: each photo with a question, 100 short answers;
- ``i2t``: each photo against its caption and 99 captions of other photos;
- ``t2i``: a caption against its photo and 99 other photos;
- ``grounding``: each photo with an object instruction, candidates crops of it and of other photos.

The labels are drawn at random (a tiny random model cannot classify anyway): the point is that both
programs score the same rows alike.

Setting up the peer (a venv with VLM2Vec v1 and the small patch that runs it under transformers 5
on a CPU; see docs/evaluation.md, "Parity with VLM2Vec v1"), then::

    python benchmarks/mmeb_parity.py --peer PEER_DIR --model PEER_DIR/tiny --family qwen2_vl \
        --out runs/parity --dtype bfloat16

``PEER_DIR`` holds ``venv/`` and ``vlm2vec/`` (the patched code); ``--peer-venv`` and
``--peer-code`` name other folders in it, e.g. a venv pinned to transformers 4.45.2 with the
unpatched code (sdpa only) for LLaVA-NeXT, whose model folder ``--transformers445-layout`` copies
into the file layout 4.45 reads. With ``--dtype float32`` a copy
of the peer code that loads its model in float32 is made beside it (``vlm2vec-fp32/``): the maths
compared without bf16 rounding. ``--record-inputs FILE`` writes the token ids and pixel shapes the
peer feeds its model for a few fixture rows (tests/data/vlm2vec_peer_inputs.json comes from it).
The peer's encodings are Python pickles (its format): the peer's own interpreter turns them into
arrays and JSON for the comparison; nothing here unpickles.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "src" / "unime" / "assets" / "flickr8k"
BACKBONE = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl", "llava_next": "llava_next", "phi3_v": "phi3_v"}
LABELS = (
    "dog cat bird horse cow sheep boat car bus train bicycle person child woman man beach mountain river lake "
    "snow grass street city building bridge tree flower ball water sand road field park forest sky rock fence "
    "wall door window table chair bench stairs rope kite surfboard skateboard ski tent hat shirt dress jacket "
    "bag umbrella frisbee toy truck motorcycle airplane fountain pool wave cliff desert hill crowd stage guitar "
    "drum book phone camera bottle cup food pizza cake fish duck goose chicken pig goat deer bear lion tiger "
    "zebra giraffe elephant monkey rabbit mouse sign flag statue tower church"
).split()
SET_NAMES = {"cls": "Parity_cls", "vqa": "Parity_vqa", "i2t": "Parity_i2t", "t2i": "Parity_t2i",
             "grounding": "Parity_grounding"}


def read_captions(photos: Path) -> dict[str, list[str]]:
    import csv

    captions: dict[str, list[str]] = {}
    for split in ("dev", "train"):
        with open(photos / f"{split}.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                captions.setdefault(row["image"], []).append(row["caption"])
    return captions


def build_fixture(photos: Path, out: Path, sets: list[str], queries: int, seed: int = 0) -> list[str]:
    """Writes the sets in the MMEB-eval layout under ``out/mmeb`` (images under ``out/images``)."""
    import pandas as pd
    from PIL import Image

    # The peer's datasets cache keys a local parquet folder by its path, not its content: a cache
    # kept from an earlier fixture at the same path would hand the peer the old rows.
    shutil.rmtree(out / "peer-datasets", ignore_errors=True)
    rng = random.Random(seed)
    captions = read_captions(photos)
    pool = sorted(captions)  # negatives come from every photo, queries are the first ones
    names = pool[:queries]
    image_dir = out / "images" / "photos"
    image_dir.mkdir(parents=True, exist_ok=True)

    def copied(name: str) -> str:
        if not (image_dir / name).exists():
            shutil.copy(photos / "images" / name, image_dir / name)
        return f"photos/{name}"
    labels = LABELS[:100]
    written = []
    for key in sets:
        rows = []
        for index, name in enumerate(names):
            path = copied(name)
            others = [n for n in pool if n != name]
            if key in ("cls", "vqa"):
                positive = rng.choice(labels)
                rest = [label for label in labels if label != positive]
                rng.shuffle(rest)
                text = ("<|image_1|> Represent the given image for classification\n" if key == "cls" else
                        "<|image_1|> Represent the given image with the following question: What is shown here?\n")
                rows.append({"qry_text": text, "qry_img_path": path, "tgt_text": [positive, *rest],
                             "tgt_img_path": [""] * 100})
            elif key == "i2t":
                negatives = [captions[n][0] for n in rng.sample(others, 99)]
                rows.append({"qry_text": "<|image_1|> Find an image caption describing the given everyday image.\n",
                             "qry_img_path": path, "tgt_text": [captions[name][0], *negatives],
                             "tgt_img_path": [""] * 100})
            elif key == "t2i":
                candidates = [name, *rng.sample(others, 99)]
                rows.append({"qry_text": f"Find me an everyday image that matches the given caption: {captions[name][0]}\n",
                             "qry_img_path": "", "tgt_text": ["<|image_1|> Represent the given image.\n"] * 100,
                             "tgt_img_path": [copied(n) for n in candidates]})
            elif key == "grounding":
                crop_dir = out / "images" / "crops"
                crop_dir.mkdir(parents=True, exist_ok=True)
                crops = []
                for j, source in enumerate([name, *rng.sample(others, 9)]):
                    crop = crop_dir / f"{index}-{j}.jpg"
                    if not crop.exists():
                        with Image.open(photos / "images" / source) as image:
                            w, h = image.size
                            image.convert("RGB").crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)).save(crop, quality=90)
                    crops.append(f"crops/{crop.name}")
                rows.append({"qry_text": "<|image_1|> Select the portion of the image that isolates the object "
                                         "of \"the main subject\".\n",
                             "qry_img_path": path, "tgt_text": ["<|image_1|> Represent the given cropped image of "
                                                                "the object.\n"] * 10,
                             "tgt_img_path": crops})
            else:
                raise SystemExit(f"--sets: unknown set {key!r}; choose from {', '.join(SET_NAMES)}")
        folder = out / "mmeb" / SET_NAMES[key]
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(folder / "test-00000-of-00001.parquet")
        written.append(SET_NAMES[key])
    # The peer reads the sets with datasets.load_dataset(folder, name): one config per set.
    configs = "".join(f"- config_name: {n}\n  data_files:\n  - split: test\n    path: {n}/test-*.parquet\n"
                      for n in written)
    (out / "mmeb" / "README.md").write_text(f"---\nconfigs:\n{configs}---\n", encoding="utf-8")
    return written


def float32_peer(code: Path) -> Path:
    """A copy of the peer's code that loads and runs its model in float32 (for the maths alone)."""
    copy = code.parent / (code.name + "-fp32")
    if not copy.exists():
        shutil.copytree(code, copy)
        for relative in ("eval.py", "src/model.py"):
            path = copy / relative
            path.write_text(path.read_text().replace("torch.bfloat16", "torch.float32"))
    return copy


# VLM2Vec v1's Qwen2-VL vision attention on the CPU (the sdpa class the CPU patch selects): one call
# over all of a batch's images with a block mask, on 3-D tensors, which torch runs with its unfused
# kernel. On a GPU, where its numbers were made, the same code runs flash-attention 2's varlen kernel:
# each image attends within itself, with a fused kernel's float32 accumulation.
_MASKED_VISION_ATTENTION = """        attention_mask = torch.zeros([1, seq_length, seq_length], device=q.device, dtype=torch.bool)
        for i in range(1, len(cu_seqlens)):
            attention_mask[..., cu_seqlens[i - 1] : cu_seqlens[i], cu_seqlens[i - 1] : cu_seqlens[i]] = True
        q = q.transpose(0, 1)
        k = k.transpose(0, 1)
        v = v.transpose(0, 1)
        attn_output = F.scaled_dot_product_attention(q, k, v, attention_mask, dropout_p=0.0)
"""
_PER_IMAGE_VISION_ATTENTION = """        # parity patch: each image attends within itself, one fused (4-D) call per image, as
        # flash-attention 2's varlen kernel computes it on a GPU
        q = q.transpose(0, 1)
        k = k.transpose(0, 1)
        v = v.transpose(0, 1)
        bounds = cu_seqlens.tolist()
        attn_output = torch.cat([
            F.scaled_dot_product_attention(q[None, :, a:b], k[None, :, a:b], v[None, :, a:b], dropout_p=0.0)[0]
            for a, b in zip(bounds[:-1], bounds[1:])], dim=1)
"""


def per_image_attention_peer(code: Path) -> Path:
    """A copy of the peer's code whose Qwen2-VL / Qwen2.5-VL vision attention runs image by image with
    the fused kernel, as its flash-attention-2 path does on a GPU (see above); nothing else changes."""
    copy = code.parent / (code.name + "-per-image")
    if not copy.exists():
        shutil.copytree(code, copy)
        for family in ("qwen2_vl", "qwen2_5_vl"):
            path = copy / "src" / "vlm_backbone" / family / f"modeling_{family}.py"
            if not path.exists():
                continue
            text = path.read_text()
            if text.count(_MASKED_VISION_ATTENTION) != 1:
                shutil.rmtree(copy)
                raise SystemExit(f"{path}: the masked vision attention this patch replaces was not found")
            path.write_text(text.replace(_MASKED_VISION_ATTENTION, _PER_IMAGE_VISION_ATTENTION))
    return copy


def transformers445_folder(model: Path, out: Path) -> Path:
    """A copy of a LLaVA-NeXT folder saved by transformers 5 in the layout transformers 4.45 reads:
    the image processor's settings in ``preprocessor_config.json`` (5 nests them in
    ``processor_config.json``), the tokenizer class named ``PreTrainedTokenizerFast``, and the vision
    tower's weights under ``vision_tower.vision_model.*`` (without that rename 4.45 keeps a random
    vision tower and says nothing). The processor config keeps ``patch_size``, so 4.45 expands
    ``<image>`` to one token per feature, as llava-hf folders do since 4.45."""
    from safetensors.torch import load_file, save_file

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model, out)
    processor = json.loads((out / "processor_config.json").read_text())
    image_processor = processor.pop("image_processor")
    (out / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=1))
    (out / "processor_config.json").write_text(json.dumps(processor, indent=1))
    tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=1))
    weights = load_file(str(out / "model.safetensors"))
    renamed = {
        ("vision_tower.vision_model." + key[len("vision_tower."):]
         if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model.") else key): value
        for key, value in weights.items()
    }
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def peer_env(fixture: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(fixture / "peer-datasets"))
    env.pop("PYTHONPATH", None)
    return env


def run_peer(python: Path, code: Path, model: str, family: str, fixture: Path, sets: list[str], batch: int,
             out: Path) -> float:
    if out.exists():
        shutil.rmtree(out)
    command = [str(python), "eval.py", "--model_name", model, "--model_backbone",
               BACKBONE[family], "--pooling", "last", "--normalize", "True", "--dataset_name", str(fixture / "mmeb"),
               "--subset_name", *sets, "--dataset_split", "test", "--per_device_eval_batch_size", str(batch),
               "--image_dir", str(fixture / "images"), "--encode_output_path", str(out), "--output_dir", str(out)]
    if family == "phi3_v":
        command += ["--num_crops", "4", "--max_len", "256"]
    elif family == "llava_next":
        command += ["--num_crops", "4", "--max_len", "4096"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=code, env=peer_env(fixture), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the peer failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def run_unime(model: str, fixture: Path, sets: list[str], batch: int, dtype: str, out: Path) -> float:
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "unime", "eval", "mmeb", "--model", model, "--data-dir", str(fixture / "mmeb"),
               "--image-dir", str(fixture / "images"), "--datasets", *sets, "--batch-size", str(batch),
               "--dtype", dtype, "--output", str(out / "report.json"), "--save-scores", str(out / "scores"),
               "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"unime eval mmeb failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


# Run by the peer's own interpreter: its encodings are Python pickles (its format), turned here
# into arrays and JSON so that this project never unpickles anything.
EXPORT = r"""
import json, pickle, sys
import numpy as np
folder, name = sys.argv[1:3]
for side in ("qry", "tgt"):
    with open(f"{folder}/{name}_{side}", "rb") as handle:
        matrix, index = pickle.load(handle)
    np.save(f"{folder}/{name}_{side}.npy", np.asarray(matrix, dtype=np.float32))
    with open(f"{folder}/{name}_{side}.json", "w") as handle:
        json.dump([[item["text"], item["img_path"]] for item in index], handle)
"""


def peer_scores(python: Path, encodings: Path, fixture: Path, name: str) -> np.ndarray:
    """The peer's candidate scores of every row, from its encodings (cosine, as its get_pred)."""
    import pandas as pd

    done = subprocess.run([str(python), "-c", EXPORT, str(encodings), name],
                          env=peer_env(fixture), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"reading the peer's encodings failed:\n{done.stderr[-3000:]}")
    rows = pd.read_parquet(next((fixture / "mmeb" / name).glob("*.parquet")))
    embedding = {}
    for side in ("qry", "tgt"):
        matrix = np.load(encodings / f"{name}_{side}.npy")
        matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        index = json.loads((encodings / f"{name}_{side}.json").read_text())
        embedding.update({(text, path): row for row, (text, path) in zip(matrix, index, strict=True)})
    return np.stack([
        np.stack([embedding[(t, p)] for t, p in zip(row.tgt_text, row.tgt_img_path, strict=True)])
        @ embedding[(row.qry_text, row.qry_img_path)]
        for row in rows.itertuples()
    ])


def compare(python: Path, peer_dir: Path, unime_dir: Path, fixture: Path, sets: list[str]) -> list[dict]:
    results = []
    for name in sets:
        theirs = peer_scores(python, peer_dir, fixture, name)
        ours = np.load(unime_dir / "scores" / f"{name}.npy").astype(np.float64)
        if ours.shape != theirs.shape:
            raise SystemExit(f"{name}: unime scores {ours.shape} but the peer's {theirs.shape}")
        results.append({
            "set": name, "queries": int(ours.shape[0]), "candidates": int(ours.shape[1]),
            "max_abs_diff": float(np.abs(ours - theirs).max()),
            "argmax_agreement": float((ours.argmax(1) == theirs.argmax(1)).mean()),
            "p1_peer": float(100 * (theirs.argmax(1) == 0).mean()),
            "p1_unime": float(100 * (ours.argmax(1) == 0).mean()),
        })
    return results


RECORD = r"""
import json, sys
sys.path.insert(0, ".")
from PIL import Image
from src.model_utils import process_vlm_inputs_fns, vlm_image_tokens, PHI3V
from src.dataset import process_image
from transformers import AutoProcessor
family, model, rows_json, out = sys.argv[1:5]
rows = json.load(open(rows_json))
if family in ("qwen2_vl", "qwen2_5_vl"):
    from transformers import Qwen2VLProcessor
    class ImageOnly(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kw):
            super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kw)
    processor = ImageOnly.from_pretrained(model)
else:
    processor = AutoProcessor.from_pretrained(model, trust_remote_code=True, num_crops=4)
records = []
for text, path in rows:
    if family != PHI3V:
        text = text.replace(vlm_image_tokens[PHI3V], vlm_image_tokens[family])
    image = process_image(Image.open(path), "high") if path and family != PHI3V else (Image.open(path) if path else None)
    batch = process_vlm_inputs_fns[family]({"text": [text], "image": [image]}, processor=processor)
    record = {"text": text, "image": path.rsplit("/", 1)[-1] if path else "",
              "input_ids": batch["input_ids"][0].tolist(), "padding_side": processor.tokenizer.padding_side}
    if image is not None:
        values = batch["pixel_values"]
        record["pixel_shape"] = list(values[0].shape if isinstance(values, list) else values.shape[1:])
        if "image_grid_thw" in batch:
            record["image_grid_thw"] = [list(map(int, g.reshape(-1))) for g in batch["image_grid_thw"] if g is not None]
    records.append(record)
json.dump({"family": family, "records": records}, open(out, "w"), indent=1)
"""


def record_inputs(python: Path, code: Path, model: str, family: str, fixture: Path, target: Path) -> None:
    """The token ids and pixel shapes the peer's collator makes for a few rows of the fixture."""
    import pandas as pd

    target = target.resolve()
    rows = []
    for name in ("Parity_cls", "Parity_t2i"):
        folder = fixture / "mmeb" / name
        if not folder.exists():
            continue
        frame = pd.read_parquet(next(folder.glob("*.parquet")))
        for row in frame.head(2).itertuples():
            rows.append((row.qry_text, str(fixture / "images" / row.qry_img_path) if row.qry_img_path else ""))
            rows.append((row.tgt_text[0], str(fixture / "images" / row.tgt_img_path[0]) if row.tgt_img_path[0] else ""))
    spec = target.with_suffix(".rows.json")
    spec.write_text(json.dumps(rows))
    script = target.with_suffix(".record.py")
    script.write_text(RECORD)
    done = subprocess.run([str(python), str(script), family, model, str(spec), str(target)],
                          cwd=code, env=peer_env(fixture), capture_output=True, text=True)
    spec.unlink()
    script.unlink()
    if done.returncode != 0:
        raise SystemExit(f"recording the peer's inputs failed:\n{done.stderr[-3000:]}")
    print(f"wrote {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", required=True, type=Path, help="folder with venv/ and vlm2vec/ (the patched v1 code)")
    parser.add_argument("--model", required=True, help="the model folder both programs load")
    parser.add_argument("--peer-venv", default="venv", help="the peer's virtualenv, a folder in --peer")
    parser.add_argument("--peer-code", default="vlm2vec", help="the peer's code, a folder in --peer")
    parser.add_argument("--transformers445-layout", action="store_true",
                        help="LLaVA-NeXT: give the peer a copy of --model in transformers 4.45's file layout "
                        "(for a peer venv pinned to the transformers VLM2Vec v1 was released with)")
    parser.add_argument("--peer-attention", default="as-patched", choices=["as-patched", "per-image"],
                        help="the peer's Qwen2-VL vision attention: as the CPU patch leaves it (one masked call "
                        "over a batch's images, unfused) or per image with the fused kernel, as on a GPU")
    parser.add_argument("--family", default="qwen2_vl", choices=sorted(BACKBONE))
    parser.add_argument("--out", required=True, type=Path, help="working folder: fixture, encodings, scores, report")
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="folder with dev.csv/train.csv and images/")
    parser.add_argument("--sets", nargs="+", default=list(SET_NAMES), choices=list(SET_NAMES))
    parser.add_argument("--queries", type=int, default=200, help="rows per set (photos drawn from --photos)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=1, help="timed runs of each program (median quoted)")
    parser.add_argument("--record-inputs", type=Path, help="write the peer's token ids and pixel shapes here")
    args = parser.parse_args()

    fixture = args.out / "fixture"
    sets = build_fixture(args.photos, fixture, args.sets, args.queries)
    python = args.peer / args.peer_venv / "bin" / "python"
    code = args.peer / args.peer_code
    peer_model = args.model
    if args.transformers445_layout:
        peer_model = str(transformers445_folder(Path(args.model), args.out / "model-445"))
    if args.peer_attention == "per-image":
        code = per_image_attention_peer(code)
    if args.dtype == "float32":
        code = float32_peer(code)
    if args.record_inputs:
        record_inputs(python, code, peer_model, args.family, fixture, args.record_inputs)
        return
    peer_walls, unime_walls = [], []
    for run in range(args.runs):
        peer_walls.append(run_peer(python, code, peer_model, args.family, fixture, sets, args.batch_size,
                                   args.out / "peer"))
        unime_walls.append(run_unime(args.model, fixture, sets, args.batch_size, args.dtype, args.out / "unime"))
        print(f"run {run + 1}/{args.runs}: VLM2Vec {peer_walls[-1]:.1f} s, unime {unime_walls[-1]:.1f} s", flush=True)
    results = compare(python, args.out / "peer", args.out / "unime", fixture, sets)
    peer_wall, unime_wall = statistics.median(peer_walls), statistics.median(unime_walls)
    print(f"\n{args.family}, {args.dtype}, batch {args.batch_size}, {args.queries} rows a set")
    print(f"peer code: {code} (vision attention: {args.peer_attention})")
    print("| set | queries x candidates | max abs score diff | argmax agreement | P@1 VLM2Vec | P@1 unime |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['set']} | {r['queries']} x {r['candidates']} | {r['max_abs_diff']:.2e} | "
              f"{r['argmax_agreement']:.3f} | {r['p1_peer']:.1f} | {r['p1_unime']:.1f} |")
    print(f"\nwall (median of {args.runs}): VLM2Vec eval.py {peer_wall:.1f} s, unime eval mmeb {unime_wall:.1f} s, "
          f"ratio {peer_wall / unime_wall:.2f}x")
    report = {"family": args.family, "dtype": args.dtype, "batch_size": args.batch_size, "queries": args.queries,
              "peer_code": str(code), "peer_attention": args.peer_attention, "sets": results, "wall_peer_s": peer_walls, "wall_unime_s": unime_walls}
    (args.out / "parity.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
