"""Settings of the synthetic benchmark: every number that changes what is generated."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from unime.synth.scenes import GRID, SHAPES


@dataclass
class SynthConfig:
    """What ``unime.synth.generate`` writes. The same config always gives the same files.

    Attributes:
        seed: drives every random choice; each data set draws from its own stream derived from the
            seed and its name, so changing one size leaves the other sets unchanged.
        image_size: side of every image in pixels (scenes, crops, real images).
        train_per_dataset: rows per MMEB-train data set.
        eval_queries: queries per MMEB-eval data set (each IND and OOD set).
        eval_candidates: distractors per query for VQA, retrieval and grounding (classification
            queries get the full label set instead). Fewer when a set cannot supply that many.
        max_objects: most objects in one scene (1 to 9, the cells of the 3 x 3 grid).
        ood_pairs: colour-shape pairs held out of training and of the IND sets; the OOD sets are
            built around them. 0 writes no OOD sets. At most one per shape.
        retrieval_images: images of the Karpathy-layout retrieval test set.
        captions_per_image: captions per image in that set (distinct, all true).
        sugarcrepe_per_split: items per SugarCrepe split.
        nli_rows: rows of the stage-1 NLI-style triplet file.
        sts_pairs: rows of the STS-style file.
        real_images: add the real-image tasks (scikit-learn digits, scikit-image photos).
        png_compress_level: zlib level of the PNG files (0-9); 1 favours speed over size.
    """

    seed: int = 0
    image_size: int = 64
    train_per_dataset: int = 200
    eval_queries: int = 50
    eval_candidates: int = 50
    max_objects: int = 4
    ood_pairs: int = 6
    retrieval_images: int = 100
    captions_per_image: int = 5
    sugarcrepe_per_split: int = 100
    nli_rows: int = 1000
    sts_pairs: int = 500
    real_images: bool = True
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        def check(name: str, low: int, high: int | None = None) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"SynthConfig.{name} must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise ValueError(f"SynthConfig.{name} must be {bound}, got {value}")

        check("seed", 0)
        check("image_size", 32, 1024)
        check("train_per_dataset", 1)
        # Two queries at least, because distractors come from the other queries' targets.
        check("eval_queries", 2)
        check("eval_candidates", 1)
        check("max_objects", 2, GRID * GRID)
        check("ood_pairs", 0, len(SHAPES))
        check("retrieval_images", 1)
        check("captions_per_image", 1, 20)
        check("sugarcrepe_per_split", 1)
        check("nli_rows", 1)
        check("sts_pairs", 1)
        check("png_compress_level", 0, 9)
        if not isinstance(self.real_images, bool):
            raise ValueError(f"SynthConfig.real_images must be a bool, got {self.real_images!r}")

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)
