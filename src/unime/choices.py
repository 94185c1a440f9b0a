"""The names of every enumerated setting, in one torch-free module.

The recipes (and so the command line, which derives its flags from them) validate against these
tuples, and the losses and data readers check their own arguments against the same ones, so a
name is spelled once. Importing this module imports nothing heavy.
"""

from __future__ import annotations

TUNING_METHODS = ("lora", "qlora", "full")
SCOPES = ("llm", "all")
# The feature-alignment stage (unime align) trains the projector alone, in full: one choice each.
ALIGN_TUNING = ("full",)
ALIGN_SCOPES = ("projector",)
# Stage 1: KL(P_s || P_t) or KL(P_t || P_s) (unime.losses.similarity_kl).
DIRECTIONS = ("student_teacher", "teacher_student")
# Stage 2 negative selection (unime.losses.hard_negative; "random", "easy", "all": the ablations).
NEGATIVE_MODES = ("hard", "random", "easy", "all")
# The stage-2 objective: UniME's hard-negative InfoNCE, UniME-V2's soft-label KL, or their sum.
LOSSES = ("unime", "unime-v2", "both")
# How stage-2 rows reach the model (unime.formats.STYLES): the raw text or the model's prompts.
INPUT_STYLES = ("raw", "prompted")
# Order of the stage-2 data sets' batches (unime.training.mmeb_data).
SAMPLING = ("proportional", "round_robin")
# --dtype of eval, encode and serve; auto: the device's rule (unime.environment.compute_dtype).
DTYPES = ("auto", "bfloat16", "float32", "float16")
# A recipe's bf16; auto: bf16 autocast where the training device has native bf16 kernels.
BF16_SETTINGS = ("auto", True, False)


def choice_name(choice: object) -> str:
    """How a choice is spelled in a recipe, a flag or a message: booleans as YAML writes them."""
    return str(choice).lower() if isinstance(choice, bool) else str(choice)
# Storage precision of a teacher cache (unime.training.teacher_cache).
CACHE_DTYPES = ("float32", "float16")
# Learning-rate schedules of transformers' Trainer that need no extra arguments.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")
