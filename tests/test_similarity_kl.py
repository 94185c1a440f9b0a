"""Specification of the stage-1 distillation loss: similarity_kl and SimilarityKLLoss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from unime.losses import LITERAL_FORM, SimilarityKLLoss, similarity_kl

SIGMA_1 = 1 / (1 + math.exp(-1))  # softmax([1, 0])[0]


def _reference_kl(
    student, teacher, tau, direction, student_cands=None, teacher_cands=None, exclude_diagonal=False
):
    """An independent explicit-loop computation in numpy, float64."""
    s = np.asarray(student, dtype=np.float64)
    t = np.asarray(teacher, dtype=np.float64)
    sc = s if student_cands is None else np.asarray(student_cands, dtype=np.float64)
    tc = t if teacher_cands is None else np.asarray(teacher_cands, dtype=np.float64)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    s, t, sc, tc = unit(s), unit(t), unit(sc), unit(tc)
    total = 0.0
    for i in range(len(s)):
        columns = [j for j in range(len(sc)) if not (exclude_diagonal and j == i)]
        ls = np.array([s[i] @ sc[j] / tau for j in columns])
        lt = np.array([t[i] @ tc[j] / tau for j in columns])
        ps = np.exp(ls - ls.max()) / np.exp(ls - ls.max()).sum()
        pt = np.exp(lt - lt.max()) / np.exp(lt - lt.max()).sum()
        p, q = (ps, pt) if direction == "student_teacher" else (pt, ps)
        total += float(sum(p[j] * math.log(p[j] / q[j]) for j in range(len(columns))))
    return total / len(s)


def test_two_rows_by_hand_both_directions():
    # Student rows orthogonal (similarities [[1,0],[0,1]]), teacher rows identical (all ones), tau 1:
    # P_s(i) = (sigma(1), sigma(-1)) up to order, P_t(i) = (1/2, 1/2) for both rows.
    student = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    teacher = torch.tensor([[2.0, 0.0, 0.0], [5.0, 0.0, 0.0]], dtype=torch.float64)
    p, q = SIGMA_1, 1 - SIGMA_1
    kl_st = p * math.log(p / 0.5) + q * math.log(q / 0.5)  # 0.1109441
    kl_ts = 0.5 * math.log(0.5 / p) + 0.5 * math.log(0.5 / q)  # 0.1201145
    assert similarity_kl(student, teacher, 1.0, **LITERAL_FORM).item() == pytest.approx(kl_st, abs=1e-12)
    ts = similarity_kl(student, teacher, 1.0, "teacher_student", exclude_diagonal=False)
    assert ts.item() == pytest.approx(kl_ts, abs=1e-12)
    assert kl_st == pytest.approx(0.1109441, abs=1e-7) and kl_ts == pytest.approx(0.1201145, abs=1e-7)


def test_three_rows_by_hand_with_the_diagonal_excluded():
    # Student rows a, b, a (a _|_ b); teacher rows all equal. Off the diagonal: row 0 sees (0, 1),
    # row 1 sees (0, 0), row 2 sees (1, 0); the teacher is uniform over the two other rows.
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    teacher = torch.ones(3, 4, dtype=torch.float64)
    p, q = SIGMA_1, 1 - SIGMA_1
    row = p * math.log(p / 0.5) + q * math.log(q / 0.5)
    expected = (row + 0.0 + row) / 3
    loss = similarity_kl(student, teacher, 1.0, "student_teacher", exclude_diagonal=True)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("direction", ["student_teacher", "teacher_student"])
@pytest.mark.parametrize("exclude_diagonal", [False, True])
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_in_batch_form_matches_the_explicit_loop(direction, exclude_diagonal, tau):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    teacher = torch.randn(6, 9, generator=generator, dtype=torch.float64)
    loss = similarity_kl(student, teacher, tau, direction, exclude_diagonal=exclude_diagonal)
    assert loss.item() == pytest.approx(
        _reference_kl(student, teacher, tau, direction, None, None, exclude_diagonal)
    )


@pytest.mark.parametrize("direction", ["student_teacher", "teacher_student"])
def test_candidate_form_matches_the_explicit_loop(direction):
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(4, 5, generator=generator), torch.randn(4, 7, generator=generator)
    s_cands, t_cands = torch.randn(6, 5, generator=generator), torch.randn(6, 7, generator=generator)
    loss = similarity_kl(
        student, teacher, 0.1, direction, student_candidates=s_cands, teacher_candidates=t_cands
    )
    expected = _reference_kl(student, teacher, 0.1, direction, s_cands, t_cands)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_identical_geometry_gives_zero_loss_whatever_the_scale():
    student = torch.randn(5, 8)
    assert similarity_kl(3.0 * student, student, 0.05, exclude_diagonal=True).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_with_the_diagonal_the_teacher_softmax_is_nearly_the_identity():
    # Why the recommended training setting masks the diagonal: with tau 0.05 and moderately spread
    # teacher rows, the self-similarity 1/tau = 20 dominates each row and the literal loss is tiny
    # even for a student whose off-diagonal structure is reversed.
    generator = torch.Generator().manual_seed(2)
    teacher = torch.randn(16, 32, generator=generator, dtype=torch.float64)
    student = -teacher + 0.1 * torch.randn(16, 32, generator=generator, dtype=torch.float64)
    student = torch.cat([student[:, :16], -student[:, 16:]], dim=1)
    literal = similarity_kl(student, teacher, 0.05, "teacher_student", exclude_diagonal=False)
    masked = similarity_kl(student, teacher, 0.05, "teacher_student", exclude_diagonal=True)
    assert literal.item() < 1e-3
    assert masked.item() > 100 * literal.item()


def test_function_and_loss_class_share_one_default_the_measured_form():
    # One default everywhere: KL(P_t || P_s), tau 0.05, self-similarity excluded (docs/losses.md).
    import inspect

    function = inspect.signature(similarity_kl).parameters
    loss_class = inspect.signature(SimilarityKLLoss).parameters
    for name in ("temperature", "direction"):
        assert function[name].default == loss_class[name].default
    assert (function["temperature"].default, function["direction"].default) == (0.05, "teacher_student")
    generator = torch.Generator().manual_seed(4)
    student = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    teacher = torch.randn(6, 9, generator=generator, dtype=torch.float64)
    measured = _reference_kl(student, teacher, 0.05, "teacher_student", exclude_diagonal=True)
    assert similarity_kl(student, teacher).item() == pytest.approx(measured, abs=1e-12)
    model = _LinearEncoder()
    features = _features(6, 5)
    embeddings = model(features)["sentence_embedding"]
    assert SimilarityKLLoss(model)([features], teacher).item() == pytest.approx(
        similarity_kl(embeddings, teacher).item(), abs=1e-12
    )
    # The paper's printed form is a named option, for the function and the class alike.
    literal = _reference_kl(student, teacher, 0.05, "student_teacher", exclude_diagonal=False)
    assert similarity_kl(student, teacher, **LITERAL_FORM).item() == pytest.approx(literal, abs=1e-12)
    assert SimilarityKLLoss(model, **LITERAL_FORM)([features], teacher).item() == pytest.approx(
        similarity_kl(embeddings, teacher, **LITERAL_FORM).item(), abs=1e-12
    )


def test_default_keeps_the_diagonal_of_the_candidate_form():
    # With candidates the diagonal is each row's own pair: the default keeps it (True is an error).
    generator = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(4, 5, generator=generator), torch.randn(4, 7, generator=generator)
    s_cands, t_cands = torch.randn(4, 5, generator=generator), torch.randn(4, 7, generator=generator)
    loss = similarity_kl(student, teacher, student_candidates=s_cands, teacher_candidates=t_cands)
    expected = _reference_kl(student, teacher, 0.05, "teacher_student", s_cands, t_cands)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    for exclude in (False, True):
        assert torch.autograd.gradcheck(
            lambda s, ex=exclude: similarity_kl(s, teacher, 0.3, "teacher_student", exclude_diagonal=ex),
            (student,),
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"direction": "both"}, "direction"),
        ({"student_candidates": torch.randn(3, 4)}, "both"),
        (
            {
                "student_candidates": torch.randn(3, 4),
                "teacher_candidates": torch.randn(3, 6),
                "exclude_diagonal": True,
            },
            "square",
        ),
        ({"student_candidates": torch.randn(3, 4), "teacher_candidates": torch.randn(2, 6)}, "same"),
        (
            {"student_candidates": torch.randn(3, 5), "teacher_candidates": torch.randn(3, 6)},
            "student_candidates",
        ),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        similarity_kl(torch.randn(3, 4), torch.randn(3, 6), **kwargs)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="same rows"):
        similarity_kl(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="student must be a 2-d"):
        similarity_kl(torch.randn(4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        similarity_kl(torch.randn(1, 4), torch.randn(1, 4), exclude_diagonal=True)


class _LinearEncoder(nn.Module):
    """A stand-in for a SentenceTransformer: features {"x": [B, 6]} -> {"sentence_embedding": [B, 4]}."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(6, 4).double()

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"sentence_embedding": self.linear(features["x"])}


def _features(rows: int, seed: int) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(rows, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)}


def test_loss_class_one_column_is_the_masked_teacher_student_form():
    model = _LinearEncoder()
    features, teacher = _features(6, 1), torch.randn(6, 9, dtype=torch.float64)
    loss = SimilarityKLLoss(model)([features], teacher)
    embeddings = model(features)["sentence_embedding"]
    expected = similarity_kl(embeddings, teacher, 0.05, "teacher_student", exclude_diagonal=True)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)


def test_loss_class_two_columns_uses_the_paired_column_as_candidates():
    model = _LinearEncoder()
    anchors, paired = _features(5, 1), _features(5, 2)
    teacher = torch.randn(5, 2, 9, dtype=torch.float64)
    loss = SimilarityKLLoss(model, temperature=0.1, direction="student_teacher")([anchors, paired], teacher)
    expected = similarity_kl(
        model(anchors)["sentence_embedding"],
        teacher[:, 0],
        0.1,
        "student_teacher",
        student_candidates=model(paired)["sentence_embedding"],
        teacher_candidates=teacher[:, 1],
    )
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("two_columns", [False, True])
def test_cached_and_uncached_loss_class_give_the_same_gradients(two_columns):
    columns = [_features(7, 1), _features(7, 2)] if two_columns else [_features(7, 1)]
    teacher = torch.randn(7, len(columns), 9, dtype=torch.float64)
    results = []
    for mini_batch_size in (None, 2):
        model = _LinearEncoder()
        loss = SimilarityKLLoss(model, mini_batch_size=mini_batch_size)(columns, teacher)
        loss.backward()
        results.append((loss.item(), model.linear.weight.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-12)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-12)
    assert results[0][1].abs().sum() > 0


def test_loss_class_rejects_bad_labels_and_columns():
    loss = SimilarityKLLoss(_LinearEncoder())
    with pytest.raises(ValueError, match="teacher embeddings as labels"):
        loss([_features(4, 1)], None)
    with pytest.raises(ValueError, match=r"labels must have shape \[4, d_t\]"):
        loss([_features(4, 1)], torch.randn(3, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[4, 2, d_t\]"):
        loss([_features(4, 1), _features(4, 2)], torch.randn(4, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match="one text column"):
        loss([_features(4, 1)] * 3, torch.randn(4, 3, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match="mini_batch_size"):
        SimilarityKLLoss(_LinearEncoder(), mini_batch_size=0)
    with pytest.raises(ValueError, match="direction"):
        SimilarityKLLoss(_LinearEncoder(), direction="sideways")


def test_loss_class_config_for_the_model_card():
    loss = SimilarityKLLoss(_LinearEncoder(), mini_batch_size=4)
    assert loss.get_config_dict() == {
        "temperature": 0.05,
        "direction": "teacher_student",
        "exclude_diagonal": True,
        "mini_batch_size": 4,
        "gather_across_devices": True,
    }
    assert loss.uses_gradient_cache and not SimilarityKLLoss(_LinearEncoder()).uses_gradient_cache
    assert "2504.17432" in loss.citation


def test_similarities_stay_float32_inside_bf16_autocast():
    from unime.losses.similarity_kl import _similarity_logits

    rows, columns = torch.randn(4, 8), torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = _similarity_logits(rows, columns, 0.05)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, _similarity_logits(rows, columns, 0.05))
