"""Stage 1 of UniME: textual discriminative knowledge distillation by matching similarity distributions.

The student (the MLLM's language model) learns the *relations* between the sentences of a batch
from a teacher text embedder: each row of the student's and the teacher's similarity matrix becomes
a distribution by a softmax with temperature, and the loss is the KL divergence between the two.
Only the n x m similarity matrices meet, so student and teacher dimensions may differ.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unime.choices import DIRECTIONS
from unime.losses.base import EmbeddingLoss, _check_temperature
from unime.losses.distributed import gather_with_grad, global_mean, world_size


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")


def _check_matrix(name: str, tensor: Tensor) -> None:
    if not isinstance(tensor, Tensor) or tensor.ndim != 2:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a 2-d tensor [rows, dim], got {shape}")


def _similarity_logits(rows: Tensor, columns: Tensor, temperature: float) -> Tensor:
    """Cosine similarities of unit-normalised rows and columns, divided by the temperature.

    Computed in at least float32: under bf16 autocast the softmax of similarities / 0.05 would lose
    most of its resolution.
    """
    dtype = torch.promote_types(rows.dtype, torch.float32)
    # An enclosing autocast would run the matmul in bf16 whatever the input dtype.
    with torch.autocast(rows.device.type, enabled=False):
        rows = F.normalize(rows.to(dtype), dim=-1)
        columns = F.normalize(columns.to(device=rows.device, dtype=dtype), dim=-1)
        return rows @ columns.T / temperature


def _drop_columns(logits: Tensor, self_columns: Tensor) -> Tensor:
    """Remove entry ``self_columns[i]`` from row i: [n, m] -> [n, m - 1].

    Removing (rather than masking with -inf) keeps the KL free of 0 * log 0 terms and their NaN
    gradients.
    """
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[torch.arange(logits.shape[0], device=logits.device), self_columns] = False
    return logits[keep].view(logits.shape[0], logits.shape[1] - 1)


def similarity_kl_rows(
    student: Tensor,
    teacher: Tensor,
    student_columns: Tensor,
    teacher_columns: Tensor,
    temperature: float,
    direction: str,
    self_columns: Tensor | None = None,
) -> Tensor:
    """Per-row KL divergence between the student's and the teacher's row-softmax similarities.

    Row i compares ``softmax_j(s_i . S_j / tau)`` with ``softmax_j(t_i . T_j / tau)`` over the
    columns ``S = student_columns``, ``T = teacher_columns`` (all L2-normalised). ``self_columns[i]``,
    when given, is the column holding row i itself; it is removed from both distributions. This is the
    shared kernel of :func:`similarity_kl` and :class:`SimilarityKLLoss`, whose rows are a local shard
    of gathered columns. Inputs are not validated here. Returns a tensor of shape [n].
    """
    logits_s = _similarity_logits(student, student_columns, temperature)
    logits_t = _similarity_logits(teacher.to(student.device), teacher_columns, temperature)
    if self_columns is not None:
        logits_s = _drop_columns(logits_s, self_columns)
        logits_t = _drop_columns(logits_t, self_columns)
    log_p_s = torch.log_softmax(logits_s, dim=1)
    log_p_t = torch.log_softmax(logits_t, dim=1)
    if direction == "student_teacher":
        return (log_p_s.exp() * (log_p_s - log_p_t)).sum(dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)


#: The loss as printed in the paper: KL(P_s || P_t) with each sentence's self-similarity kept.
#: ``similarity_kl(s, t, **LITERAL_FORM)``, ``SimilarityKLLoss(model, **LITERAL_FORM)``.
LITERAL_FORM: dict[str, Any] = {"direction": "student_teacher", "exclude_diagonal": False}


def similarity_kl(
    student: Tensor,
    teacher: Tensor,
    temperature: float = 0.05,
    direction: str = "teacher_student",
    *,
    student_candidates: Tensor | None = None,
    teacher_candidates: Tensor | None = None,
    exclude_diagonal: bool | None = None,
) -> Tensor:
    """Mean KL divergence between the student's and the teacher's similarity distributions.

    UniME stage 1 (Gu et al. 2025, "Breaking the Modality Barrier", arXiv 2504.17432, Sec. 3.1).
    With ``E_s`` = L2-normalised ``student`` [n, d_s] and ``E_t`` = L2-normalised ``teacher``
    [n, d_t] (the dimensions may differ)::

        P_s(i, .) = softmax_j(E_s E_s^T / tau)[i]      P_t(i, .) = softmax_j(E_t E_t^T / tau)[i]
        loss = 1/n sum_i KL(P_t(i, .) || P_s(i, .))              (direction="teacher_student")
        loss = 1/n sum_i KL(P_s(i, .) || P_t(i, .))              (direction="student_teacher")

    The paper prints a sum over rows; the mean differs by the constant n and keeps the loss scale
    independent of the batch size. Given ``student_candidates`` [m, d_s] and ``teacher_candidates``
    [m, d_t], the matrices are ``E_s C_s^T`` and ``E_t C_t^T`` instead (e.g. premises against their
    paired hypotheses). ``exclude_diagonal`` removes the self-similarity ``j = i`` from both
    distributions; None (the default) removes it in the in-batch square form and keeps the
    candidate form whole (its diagonal is each row's own pair, not a self-similarity); True with
    candidates is an error. The square form with the diagonal removed needs n >= 2.

    Defaults (the same as :class:`SimilarityKLLoss` and ``unime distill``): KL(P_t || P_s),
    ``temperature=0.05``, diagonal excluded, the measured best. The paper's literal form
    (KL(P_s || P_t), diagonal included) is :data:`LITERAL_FORM`. On a CPU run (SmolLM2-135M-Instruct
    student, all-MiniLM-L6-v2 teacher, 7 minutes each, STS-B test Spearman x100) the literal form
    reached 62.3 to 65.5 for both directions and tau 0.02 / 0.05, in-batch InfoNCE 74.8, and the
    default 76.3. With the diagonal included the teacher's row-softmax is almost the identity
    (0.0002 to 0.0003 of the mass off the diagonal in a batch of 64), so the loss collapses within
    20 steps and only pushes the student's sentences apart.

    Example::

        >>> import torch
        >>> from unime.losses import LITERAL_FORM, similarity_kl
        >>> student, teacher = torch.randn(8, 16), torch.randn(8, 32)
        >>> loss = similarity_kl(student, teacher)  # KL(P_t || P_s), tau 0.05, diagonal excluded
        >>> literal = similarity_kl(student, teacher, **LITERAL_FORM)
        >>> loss.shape, literal.shape
        (torch.Size([]), torch.Size([]))
    """
    _check_temperature(temperature)
    _check_direction(direction)
    _check_matrix("student", student)
    _check_matrix("teacher", teacher)
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student and teacher need the same rows, got {student.shape[0]} and {teacher.shape[0]}"
        )
    if student.shape[0] == 0:
        raise ValueError("student and teacher are empty: need at least one row")
    if (student_candidates is None) != (teacher_candidates is None):
        raise ValueError("give both student_candidates and teacher_candidates, or neither")
    if exclude_diagonal is None:
        exclude_diagonal = student_candidates is None
    if student_candidates is None:
        student_candidates, teacher_candidates = student, teacher
    else:
        if exclude_diagonal:
            raise ValueError(
                "exclude_diagonal=True needs the in-batch square form E E^T; with candidates the diagonal "
                "is not a self-similarity"
            )
        _check_matrix("student_candidates", student_candidates)
        _check_matrix("teacher_candidates", teacher_candidates)
        if student_candidates.shape[0] != teacher_candidates.shape[0] or student_candidates.shape[0] == 0:
            raise ValueError(
                "student_candidates and teacher_candidates need the same, non-zero number of rows, got "
                f"{student_candidates.shape[0]} and {teacher_candidates.shape[0]}"
            )
        for name, rows, cols in (
            ("student", student, student_candidates),
            ("teacher", teacher, teacher_candidates),
        ):
            if rows.shape[1] != cols.shape[1]:
                raise ValueError(
                    f"{name} has dim {rows.shape[1]} but {name}_candidates has dim {cols.shape[1]}"
                )
    self_columns = None
    if exclude_diagonal:
        if student.shape[0] < 2:
            raise ValueError("exclude_diagonal=True needs at least 2 rows: one row has no other column")
        self_columns = torch.arange(student.shape[0], device=student.device)
    rows = similarity_kl_rows(
        student, teacher, student_candidates, teacher_candidates, temperature, direction, self_columns
    )
    return rows.mean()


def _teacher_columns(labels: Tensor | None, num_columns: int, rows: int) -> list[Tensor]:
    """Split the ``labels`` of a batch into one teacher matrix [rows, d_t] per text column."""
    if labels is None:
        raise ValueError(
            "SimilarityKLLoss needs the teacher embeddings as labels: a dataset column 'label' holding "
            "[d_t] per row (one text column) or [n_cols, d_t] per row"
        )
    if labels.ndim == 2 and num_columns == 1:
        labels = labels.unsqueeze(1)
    if labels.ndim != 3 or labels.shape[0] != rows or labels.shape[1] != num_columns:
        raise ValueError(
            f"SimilarityKLLoss: labels must have shape [{rows}, d_t] (one text column) or "
            f"[{rows}, {num_columns}, d_t] for {num_columns} text column(s), got {tuple(labels.shape)}"
        )
    return [labels[:, column] for column in range(num_columns)]


class SimilarityKLLoss(EmbeddingLoss):
    """The UniME stage-1 distillation loss (:func:`similarity_kl`) as a sentence-transformers loss.

    Inputs:

    - one text column: the in-batch form, each sentence's similarities to every sentence of the
      batch; ``labels`` are the teacher embeddings [B, d_t] (or [B, 1, d_t]);
    - two text columns (anchor, paired): each anchor's similarities to the paired column (E C^T);
      ``labels`` [B, 2, d_t] hold the teacher embeddings of both columns.

    The defaults are those of :func:`similarity_kl` (KL(P_t || P_s), tau 0.05, diagonal excluded);
    ``SimilarityKLLoss(model, **LITERAL_FORM)`` is the paper's printed form. ``exclude_diagonal``
    removes each sentence's self-similarity in the one-column form; in the two-column form the
    diagonal is the anchor's own pair, not a self-similarity, and is always kept. ``mini_batch_size`` runs the loss
    on sentence-transformers' GradCache engine (``CachedLossMixin``), so the batch is not bounded by
    activation memory; without it the model embeds the whole batch at once. With torch.distributed
    initialised and ``gather_across_devices``, the columns span the global batch and each rank
    computes the loss of its own rows (scaling rule: :func:`unime.losses.distributed.global_mean`).

    Example::

        >>> from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
        >>> from datasets import Dataset
        >>> from unime.losses import SimilarityKLLoss
        >>> model = SentenceTransformer("path/to/student")  # doctest: +SKIP
        >>> data = Dataset.from_dict({"text": sentences, "label": teacher_embeddings})  # doctest: +SKIP
        >>> loss = SimilarityKLLoss(model, mini_batch_size=8)  # doctest: +SKIP
        >>> SentenceTransformerTrainer(model=model, train_dataset=data, loss=loss).train()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.05,
        direction: str = "teacher_student",
        exclude_diagonal: bool = True,
        mini_batch_size: int | None = None,
        gather_across_devices: bool = True,
    ) -> None:
        super().__init__(model, temperature, mini_batch_size, gather_across_devices)
        _check_direction(direction)
        self.direction = direction
        self.exclude_diagonal = bool(exclude_diagonal)

    def check_columns(self, count: int) -> None:
        if count not in (1, 2):
            raise ValueError(f"SimilarityKLLoss takes one text column (in-batch) or two (anchor, paired), got {count}")

    def compute(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """The loss of this rank's rows from the student embeddings of each column and the labels."""
        student = embeddings[0]
        teachers = _teacher_columns(labels, len(embeddings), student.shape[0])
        ranks = world_size() if self.gather_across_devices else 1
        student_columns, offset = gather_with_grad(embeddings[-1]) if ranks > 1 else (embeddings[-1], 0)
        teacher_columns = teachers[-1].to(student.device)
        if ranks > 1:
            teacher_columns, _ = gather_with_grad(teacher_columns)
        self_columns = None
        if len(embeddings) == 1 and self.exclude_diagonal:
            if student_columns.shape[0] < 2:
                raise ValueError(
                    "SimilarityKLLoss with exclude_diagonal=True needs batches of at least 2 sentences"
                )
            self_columns = offset + torch.arange(student.shape[0], device=student.device)
        rows = similarity_kl_rows(
            student,
            teachers[0],
            student_columns,
            teacher_columns,
            self.temperature,
            self.direction,
            self_columns,
        )
        return global_mean(rows, student_columns.shape[0], ranks)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "direction": self.direction,
            "exclude_diagonal": self.exclude_diagonal,
            "mini_batch_size": self.mini_batch_size,
            "gather_across_devices": self.gather_across_devices,
        }
