"""UniME-V2's soft-label loss: the pure function against hand-computed values, the released code's
maths and the exact KL; bad input named. (GradCache and 2-process equivalence of the loss class:
tests/test_losses_distributed.py.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unime.losses import SoftLabelKLLoss, soft_label_kl, soft_label_kl_rows


def _softmax(values: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def _by_hand(scores: list[list[float]], judge: list[list[float]], temperature: float, eps: float) -> float:
    """Python floats, one query at a time: (KL(Q || P) + KL(P || Q)) / 2 with log(x + eps) on the
    second distribution of each KL, averaged over the queries."""
    total = 0.0
    for s, j in zip(scores, judge, strict=True):
        p, q = _softmax(s, temperature), _softmax(j, temperature)
        kl_qp = sum(qi * (math.log(qi) - math.log(pi + eps)) for pi, qi in zip(p, q, strict=True) if qi > 0)
        kl_pq = sum(pi * (math.log(pi) - math.log(qi + eps)) for pi, qi in zip(p, q, strict=True) if pi > 0)
        total += 0.5 * (kl_qp + kl_pq)
    return total / len(scores)


def _released(scores: torch.Tensor, judge: torch.Tensor, temperature: float) -> torch.Tensor:
    """The maths of UniME-V2's released SoftLabelSoftKLContrastiveLoss.forward (Embedding/src/loss.py),
    written again here: kl_div with batchmean on log(softmax + 1e-8)."""
    q = F.softmax(judge / temperature, dim=-1)
    p = F.softmax(scores / temperature, dim=-1)
    kl_pq = F.kl_div(torch.log(p + 1e-8), q, reduction="batchmean", log_target=False)
    kl_qp = F.kl_div(torch.log(q + 1e-8), p, reduction="batchmean", log_target=False)
    return 0.5 * (kl_pq + kl_qp)


HAND_CASES = [
    # (scores, judge, temperature): a query whose judge agrees, one whose judge ranks a negative first,
    # a near-zero judge probability (where 1e-8 matters), and the class default's temperature.
    ([[0.30, 0.28, 0.25]], [[0.60, 0.55, 0.50]], 0.02),
    ([[0.30, 0.28, 0.25], [0.10, 0.40, 0.20]], [[0.60, 0.55, 0.50], [0.20, 0.90, 0.10]], 0.02),
    ([[0.30, 0.28, 0.10]], [[0.90, 0.20, 0.85]], 0.02),
    ([[0.5, -0.2, 0.1, 0.3]], [[0.7, 0.1, 0.2, 0.6]], 0.1),
]


@pytest.mark.parametrize(("scores", "judge", "temperature"), HAND_CASES)
def test_soft_label_kl_equals_the_formula_by_hand(scores, judge, temperature):
    got = soft_label_kl(torch.tensor(scores, dtype=torch.float64), torch.tensor(judge, dtype=torch.float64),
                        temperature)
    assert float(got) == pytest.approx(_by_hand(scores, judge, temperature, 1e-8), rel=1e-5, abs=1e-7)
    exact = soft_label_kl(torch.tensor(scores), torch.tensor(judge), temperature, eps=0.0)
    assert float(exact) == pytest.approx(_by_hand(scores, judge, temperature, 0.0), rel=1e-5, abs=1e-7)


def test_the_released_codes_epsilon_caps_the_log_ratio():
    # The judge gives the second candidate ~6e-16 at tau 0.02: log(q + 1e-8) = -18.4 where log q = -35.
    scores, judge = torch.tensor([[0.30, 0.28, 0.10]]), torch.tensor([[0.90, 0.20, 0.85]])
    assert float(soft_label_kl(scores, judge)) == pytest.approx(2.6162, abs=1e-3)
    assert float(soft_label_kl(scores, judge, eps=0.0)) == pytest.approx(4.8562, abs=1e-3)


def test_soft_label_kl_equals_the_released_maths_on_random_batches():
    generator = torch.Generator().manual_seed(0)
    for temperature in (0.02, 0.05, 0.1):
        scores = torch.rand(16, 9, generator=generator) * 2 - 1
        judge = torch.rand(16, 9, generator=generator)
        torch.testing.assert_close(soft_label_kl(scores, judge, temperature), _released(scores, judge, temperature),
                                   rtol=1e-5, atol=1e-6)


def test_rows_agree_with_the_mean_and_vanish_when_the_distributions_match():
    scores = torch.tensor([[0.5, 0.1, 0.2], [0.3, 0.3, 0.0]])
    rows = soft_label_kl_rows(scores, scores.clone(), 0.1, eps=0.0)
    torch.testing.assert_close(rows, torch.zeros(2), atol=1e-6, rtol=0)
    judge = torch.tensor([[0.9, 0.0, 0.1], [0.2, 0.7, 0.1]])
    rows = soft_label_kl_rows(scores, judge, 0.1)
    assert rows.shape == (2,) and bool((rows > 0).all())
    torch.testing.assert_close(soft_label_kl(scores, judge, 0.1), rows.mean())


def test_gradient_reaches_the_scores_only():
    scores = torch.tensor([[0.4, 0.35, 0.1]], requires_grad=True)
    judge = torch.tensor([[0.2, 0.9, 0.1]], requires_grad=True)
    soft_label_kl(scores, judge).backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0
    # The judge prefers candidate 1: descending the loss raises its score over the positive's.
    assert scores.grad[0, 1] < 0 < scores.grad[0, 0]
    assert judge.grad is None


@pytest.mark.parametrize(("scores", "judge", "message"), [
    (torch.zeros(3), torch.zeros(3), "matrix"),
    (torch.zeros(2, 1), torch.zeros(2, 1), "at least 2 candidates"),
    (torch.zeros(2, 3), torch.zeros(2, 4), r"shape of scores \(2, 3\)"),
    (torch.zeros(2, 3), torch.tensor([[0.1, float("nan"), 0.2], [0.1, 0.2, 0.3]]), "NaN"),
])
def test_bad_input_is_named(scores, judge, message):
    with pytest.raises(ValueError, match=message):
        soft_label_kl(scores, judge)


def test_bad_temperature_and_weights_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        soft_label_kl(torch.zeros(1, 2), torch.zeros(1, 2), temperature=0.0)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="infonce_weight"):
        SoftLabelKLLoss(model, infonce_weight=-1.0)
    loss = SoftLabelKLLoss(model)
    with pytest.raises(ValueError, match="columns"):
        loss.check_columns(2)
    with pytest.raises(ValueError, match="judge scores"):
        loss.compute([torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)], None)
    with pytest.raises(ValueError, match=r"\[2, 2\]"):
        loss.compute([torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)], torch.rand(2, 3))


def test_the_loss_class_scores_each_query_against_its_own_candidates():
    generator = torch.Generator().manual_seed(1)
    query, positive, negative = (torch.randn(4, 8, generator=generator) for _ in range(3))
    judge = torch.rand(4, 2, generator=generator)
    loss = SoftLabelKLLoss(torch.nn.Linear(2, 2), temperature=0.05)
    got = loss.compute([query, positive, negative], judge)
    scores = torch.stack([F.cosine_similarity(query, positive), F.cosine_similarity(query, negative)], dim=1)
    torch.testing.assert_close(got, soft_label_kl(scores, judge, 0.05))
    assert loss.last_stats["soft_label_kl"] == pytest.approx(float(got))
