"""Writing images under ``OUT/images`` and keeping the index of what each one shows."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from unime.synth.scenes import Scene, crop, render


class ImageStore:
    """Saves PNG files under ``root`` and remembers, per file, the scene objects and boxes it shows.

    Paths handed out are relative to ``root`` with forward slashes, as the data layouts expect.
    """

    def __init__(self, root: Path, image_size: int, compress_level: int = 1) -> None:
        self.root = root
        self.image_size = image_size
        self.compress_level = compress_level
        self.index: list[dict[str, object]] = []

    def save(self, image: Image.Image, rel: str, record: dict[str, object]) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG", compress_level=self.compress_level)
        self.index.append({"image": rel, **record})
        return rel

    def scene(self, scene: Scene, rel: str) -> tuple[str, Image.Image]:
        """Render ``scene``, save it at ``rel`` and return the path and the image (for crops)."""
        image = render(scene, self.image_size)
        objects = [
            {
                "colour": o.colour,
                "shape": o.shape,
                "size": o.size,
                "row": o.row,
                "col": o.col,
                "box": list(scene.box(o, self.image_size)),
            }
            for o in scene.objects
        ]
        return self.save(image, rel, {"kind": "scene", "objects": objects}), image

    def crop(self, scene: Scene, image: Image.Image, index: int, source: str, rel: str) -> str:
        """Save the crop of object ``index`` of ``scene`` (rendered as ``image``, saved at ``source``)."""
        obj = scene.objects[index]
        patch, region = crop(image, scene, obj, self.image_size)
        record = {"kind": "crop", "source": source, "box": list(region), "object": list(obj.attributes)}
        return self.save(patch, rel, record)

    def write_index(self, path: Path) -> None:
        """One JSON line per image: what it shows, so any file can be checked against its truth."""
        with path.open("w", encoding="utf-8") as handle:
            for record in self.index:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
