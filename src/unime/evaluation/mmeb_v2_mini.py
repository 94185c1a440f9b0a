"""A miniature MMEB-V2, built offline from the shipped Flickr8k photos and captions.

:func:`build_miniature` writes, under one folder, the layout ``unime eval mmeb-v2`` reads
(docs/evaluation.md, "MMEB-V2") and three YAML configs in VLM2Vec-V2's format:

- **image**: ``MiniCLS`` (``image_cls``, local): each photo against five of its caption's words,
  in MMEB-eval's parquet layout;
- **video**: every video is a folder of frames, consecutive shipped photos (``frame_0001.jpg`` ...):
  ``UCF101`` (``video_classification``, global, with a ``labels.txt``), ``SmthSmthV2`` (``ssv2``,
  local candidate lists) and ``MSR-VTT`` (``msrvtt``, text to video, global);
- **visdoc**: ``MiniDoc`` (``vidore``) and ``MiniVisRAG`` (``visrag``): pages rendered with a real
  font (DejaVu Sans from matplotlib when it is installed) holding the captions of one photo each; a
  query is another caption of that photo; ``qrels`` in the BEIR layout, one query with two relevant
  pages of graded relevance. ``MiniVisRAG``'s page images are only in its corpus's ``image`` bytes,
  as on the hub: the reader writes them under their VLM2Vec-V2 names.

The scores of a random model on it mean nothing; it shows every path of the reader working.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import shutil
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "flickr8k"

VIDEO_FRAMES_SAVED = 10  # frames per miniature video folder
NUM_FRAMES = 4  # frames sampled per video in the miniature configs


def _captions() -> dict[str, list[str]]:
    by_image: dict[str, list[str]] = {}
    with open(ASSETS / "dev.csv", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            by_image.setdefault(row["image"], []).append(row["caption"].strip())
    return {image: captions for image, captions in by_image.items() if len(captions) >= 3}


def _font(size: int) -> Any:
    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def render_page(lines: list[str], width: int = 448, height: int = 336) -> Any:
    """A white page with ``lines`` of black text, wrapped to the page's width."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    font = _font(18)
    y = 16
    for line in lines:
        words, current = line.split(), ""
        for word in words:
            candidate = f"{current} {word}".strip()
            if draw.textlength(candidate, font=font) > width - 32 and current:
                draw.text((16, y), current, fill="black", font=font)
                y += 24
                current = word
            else:
                current = candidate
        if current:
            draw.text((16, y), current, fill="black", font=font)
            y += 32
    return page


def _parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _yaml(path: Path, entries: dict[str, dict[str, Any]]) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(entries, sort_keys=False), encoding="utf-8")
    return path


def _content_word(caption: str) -> str:
    words = [w.strip(".,").lower() for w in caption.split() if len(w.strip(".,")) > 3]
    return words[-1] if words else caption.split()[-1].lower()


def build_miniature(root: str | Path, videos: int = 4, pages: int = 6) -> dict[str, Path]:
    """Write the miniature under ``root``; returns the three config paths by group."""
    root = Path(root)
    captions = _captions()
    photos = sorted(captions)
    # ---- image: MMEB-eval layout, images under image-tasks/
    image_root = root / "image-tasks"
    rows = []
    for i, photo in enumerate(photos[:5]):
        (image_root / "MiniCLS").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ASSETS / "images" / photo, image_root / "MiniCLS" / photo)
        words = [_content_word(captions[p][0]) for p in photos[:5]]
        order = [words[i], *[w for j, w in enumerate(words) if j != i]]
        rows.append({"qry_text": "<|image_1|>\nRepresent the given image for classification\n",
                     "qry_img_path": f"MiniCLS/{photo}", "tgt_text": order, "tgt_img_path": [""] * len(order)})
    _parquet(root / "MMEB-eval" / "MiniCLS" / "test-00000-of-00001.parquet", rows)
    image_yaml = _yaml(root / "configs" / "image.yaml", {"MiniCLS": {
        "dataset_parser": "image_cls", "dataset_name": "MiniCLS", "dataset_split": "test",
        "image_root": "image-tasks/", "eval_type": "local"}})
    # ---- video: frames folders of consecutive photos
    frames_root = root / "video-tasks" / "frames"
    ids = [f"video{i}" for i in range(videos)]
    first_photos = []
    for kind in ("video_cls/UCF101", "video_cls/SSv2", "video_ret/MSR-VTT"):
        for v, video_id in enumerate(ids):
            folder = frames_root / kind / video_id
            folder.mkdir(parents=True, exist_ok=True)
            start = 10 + v * VIDEO_FRAMES_SAVED
            for f in range(VIDEO_FRAMES_SAVED):
                shutil.copyfile(ASSETS / "images" / photos[start + f], folder / f"frame_{f + 1:04d}.jpg")
            if kind.endswith("UCF101"):
                first_photos.append(photos[start])
    labels = [_content_word(captions[p][0]) for p in first_photos]
    extra = ["juggling", "rowing"]
    hf = root / "hf"
    _parquet(hf / "UCF101" / "test.parquet",
             [{"video_id": video_id, "pos_text": label} for video_id, label in zip(ids, labels, strict=True)])
    (hf / "UCF101" / "labels.txt").write_text("\n".join([*extra, *labels]) + "\n", encoding="utf-8")
    _parquet(hf / "SmthSmthV2" / "test.parquet",
             [{"video_id": video_id, "pos_text": label,
               "neg_text": [label, *[w for w in (*labels, *extra) if w != label][:3]]}
              for video_id, label in zip(ids, labels, strict=True)])
    _parquet(hf / "MSR-VTT" / "test.parquet",
             [{"video_id": video_id, "video": f"{video_id}.mp4", "caption": captions[photo][1]}
              for video_id, photo in zip(ids, first_photos, strict=True)])
    common = {"num_sample_per_subset": None, "max_frames_saved": 64, "num_frames": NUM_FRAMES}
    video_yaml = _yaml(root / "configs" / "video.yaml", {
        "SmthSmthV2": {"dataset_parser": "ssv2", "dataset_name": "SmthSmthV2",
                       "video_root": "video-tasks/videos/video_cls/SSv2",
                       "frame_root": "video-tasks/frames/video_cls/SSv2", **common, "eval_type": "local"},
        "UCF101": {"dataset_parser": "video_classification", "dataset_name": "UCF101",
                   "video_root": "video-tasks/videos/video_cls/UCF101",
                   "frame_root": "video-tasks/frames/video_cls/UCF101", **common, "eval_type": "global"},
        "MSR-VTT": {"dataset_parser": "msrvtt", "dataset_name": "MSR-VTT",
                    "video_root": "video-tasks/videos/video_ret/MSR-VTT/",
                    "frame_root": "video-tasks/frames/video_ret/MSR-VTT/", **common, "eval_type": "global"},
    })
    # ---- visdoc: BEIR layout, rendered pages
    doc_photos = photos[60:60 + pages]
    for name, parser in (("MiniDoc", "vidore"), ("MiniVisRAG", "visrag")):
        corpus, queries, qrels = [], [], []
        for p, photo in enumerate(doc_photos):
            corpus_id = f"page-{p}" if parser == "vidore" else f"{photo.rsplit('.', 1)[0]}_page{p}.png"
            page = render_page(captions[photo][1:])
            row: dict[str, Any] = {"corpus-id": corpus_id}
            if parser == "vidore":
                (root / "visdoc-tasks" / name).mkdir(parents=True, exist_ok=True)
                page.save(root / "visdoc-tasks" / name / f"{corpus_id}.png")
            else:
                buffer = io.BytesIO()
                page.save(buffer, format="PNG")
                row["image"] = {"bytes": buffer.getvalue(), "path": corpus_id}
            corpus.append(row)
            queries.append({"query-id": f"q{p}", "query": captions[photo][0]})
            qrels.append({"query-id": f"q{p}", "corpus-id": corpus_id, "score": 1})
        # One graded query: two relevant pages, the second more relevant; a zero score is dropped.
        qrels[0]["score"] = 2
        qrels.append({"query-id": "q0", "corpus-id": corpus[1]["corpus-id"], "score": 1})
        qrels.append({"query-id": "q1", "corpus-id": corpus[2]["corpus-id"], "score": 0})
        for part, part_rows in (("queries", queries), ("corpus", corpus), ("qrels", qrels)):
            _parquet(hf / name / part / "test.parquet", part_rows)
    visdoc_yaml = _yaml(root / "configs" / "visdoc.yaml", {
        name: {"dataset_parser": parser, "dataset_name": name, "image_root": f"visdoc-tasks/{name}",
               "eval_type": "global"}
        for name, parser in (("MiniDoc", "vidore"), ("MiniVisRAG", "visrag"))})
    (root / "README.json").write_text(json.dumps({"built_by": "unime.evaluation.mmeb_v2_mini"}) + "\n",
                                      encoding="utf-8")
    return {"image": image_yaml, "video": video_yaml, "visdoc": visdoc_yaml}
