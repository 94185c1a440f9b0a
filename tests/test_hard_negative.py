"""Specification of the stage-2 loss: mine_negatives, hard_negative_infonce and HardNegativeInfoNCELoss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unime.losses import HardNegativeInfoNCELoss, hard_negative_infonce, mine_negatives, mining_statistics

# Queries are the basis vectors e_0, e_1, e_2 of R^4, so S[i, j] = candidates[j][i]; the last
# coordinate makes every candidate a unit vector. The designed similarity matrix:
#   row 0: positive 0.50, candidate 1 at 0.65 (> 0.50 + 0.1: dropped), candidate 2 at 0.30
#   row 1: positive 0.50, candidate 0 at 0.20, candidate 2 at 0.55 (<= 0.60: kept, harder than positive)
#   row 2: positive 0.40, candidate 0 at 0.10, candidate 1 at 0.30
HAND_SCORES = [[0.50, 0.65, 0.30], [0.20, 0.50, 0.55], [0.10, 0.30, 0.40]]


def _hand_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.tensor(HAND_SCORES, dtype=torch.float64)
    query = torch.eye(4, dtype=torch.float64)[:3]
    last = torch.sqrt(1 - (scores**2).sum(dim=0))
    candidates = torch.cat([scores.T, last[:, None]], dim=1)
    return query, candidates


def _log1p_sum_exp(*exponents: float) -> float:
    return math.log(1 + sum(math.exp(x) for x in exponents))


def test_three_rows_by_hand_with_one_hard_negative():
    query, candidates = _hand_inputs()
    # tau 0.1: row 0 keeps only candidate 2 (exponent (0.3-0.5)/0.1 = -2), row 1 takes candidate 2
    # (+0.5), row 2 takes candidate 1 (-1).
    expected = (_log1p_sum_exp(-2) + _log1p_sum_exp(0.5) + _log1p_sum_exp(-1)) / 3
    loss = hard_negative_infonce(query, candidates, temperature=0.1, num_hard_negatives=1)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.4714222, abs=1e-7)


def test_fewer_survivors_than_k_uses_only_the_survivors():
    query, candidates = _hand_inputs()
    # k = 8 but the rows keep 1, 2 and 2 survivors; the dropped candidate of row 0 never enters.
    expected = (_log1p_sum_exp(-2) + _log1p_sum_exp(-3, 0.5) + _log1p_sum_exp(-3, -1)) / 3
    loss = hard_negative_infonce(query, candidates, temperature=0.1, num_hard_negatives=8)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    mining = mine_negatives(torch.tensor(HAND_SCORES), torch.arange(3), num_negatives=8)
    assert mining.indices.tolist() == [[2, -1, -1], [2, 0, -1], [1, 0, -1]]
    assert mining.dropped.tolist() == [[False, True, False], [False, False, False], [False, False, False]]
    assert not (mining.selected & mining.dropped).any()
    assert not mining.selected[torch.arange(3), torch.arange(3)].any()


def test_easy_negatives_take_the_least_similar_survivors():
    query, candidates = _hand_inputs()
    expected = (_log1p_sum_exp(-2) + _log1p_sum_exp(-3) + _log1p_sum_exp(-3)) / 3
    loss = hard_negative_infonce(query, candidates, temperature=0.1, num_hard_negatives=1, negatives="easy")
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_all_negatives_is_plain_in_batch_infonce_without_filtering():
    query, candidates = _hand_inputs()
    expected = (_log1p_sum_exp(1.5, -2) + _log1p_sum_exp(-3, 0.5) + _log1p_sum_exp(-3, -1)) / 3
    loss = hard_negative_infonce(query, candidates, temperature=0.1, num_hard_negatives=1, negatives="all")
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    generator = torch.Generator().manual_seed(0)
    q, c, extra = (torch.randn(5, 8, generator=generator) for _ in range(3))
    pool = torch.cat([c, extra])
    reference = F.cross_entropy(F.normalize(q) @ F.normalize(pool).T / 0.05, torch.arange(5))
    loss = hard_negative_infonce(
        q, c, 0.05, negatives="all", extra_candidates=extra, false_negative_margin=-1.0
    )
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def _reference_loss(query, candidates, extra, tau, k, margin, mode):
    """An independent explicit-loop computation in numpy, float64."""
    q = np.asarray(query, dtype=np.float64)
    pool = np.concatenate([np.asarray(candidates), np.asarray(extra)]).astype(np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    pool = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(q)):
        s = [float(q[i] @ pool[j]) for j in range(len(pool))]
        others = [j for j in range(len(pool)) if j != i]
        if mode == "all":
            chosen = others
        else:
            survivors = [j for j in others if not s[j] > s[i] + margin]
            sign = -1.0 if mode == "hard" else 1.0
            chosen = sorted(survivors, key=lambda j: (sign * s[j], j))[:k]
        logits = [s[i] / tau] + [s[j] / tau for j in chosen]
        top = max(logits)
        total += top + math.log(sum(math.exp(x - top) for x in logits)) - s[i] / tau
    return total / len(q)


@pytest.mark.parametrize("mode", ["hard", "easy", "all"])
@pytest.mark.parametrize(("k", "margin"), [(3, 0.1), (8, 0.0), (1, 0.3)])
def test_matches_the_explicit_loop_with_explicit_negatives(mode, k, margin):
    generator = torch.Generator().manual_seed(7)
    query = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    positive = query + 0.8 * torch.randn(6, 5, generator=generator, dtype=torch.float64)
    extra = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    loss = hard_negative_infonce(query, positive, 0.05, k, margin, negatives=mode, extra_candidates=extra)
    assert loss.item() == pytest.approx(
        _reference_loss(query, positive, extra, 0.05, k, margin, mode), abs=1e-10
    )


def test_all_candidates_dropped_gives_zero_loss_and_no_gradient_for_that_query():
    # Query 0 is far from its positive and close to every other candidate.
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    candidates = torch.tensor([[-1.0, 0.0], [1.0, 0.1], [1.0, 0.3]], dtype=torch.float64)
    scores = F.normalize(query.detach()) @ F.normalize(candidates).T
    mining = mine_negatives(scores, torch.arange(3), num_negatives=2)
    # Row 1 (positive at 0.0995) also drops candidate 2 (0.287); row 2 keeps everything.
    assert mining.dropped.tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    assert mining.indices[0].tolist() == [-1, -1]
    loss = hard_negative_infonce(query, candidates, 0.1, 2)
    loss.backward()
    assert torch.all(query.grad[0] == 0)
    assert query.grad[1:].abs().sum() > 0
    stats = mining_statistics(scores, mining, torch.arange(3))
    assert stats["false_negative_rate"] == pytest.approx(3 / 6)


def test_ties_go_to_the_lower_column_index():
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.2], [0.2, 0.9, 0.2, 0.2, 0.5]])
    positive = torch.tensor([0, 1])
    hard = mine_negatives(scores, positive, num_negatives=2, negatives="hard")
    assert hard.indices.tolist() == [[1, 2], [4, 0]]
    easy = mine_negatives(scores, positive, num_negatives=2, negatives="easy")
    assert easy.indices.tolist() == [[4, 1], [0, 2]]
    assert torch.equal(mine_negatives(scores, positive, 2).indices, hard.indices)


def test_candidate_exactly_at_the_threshold_survives():
    # 0.5 + 0.25 == 0.75 exactly in binary floating point; only strictly greater is dropped.
    scores = torch.tensor([[0.5, 0.75, 0.875]])
    mining = mine_negatives(scores, torch.tensor([0]), num_negatives=2, false_negative_margin=0.25)
    assert mining.dropped.tolist() == [[False, False, True]]
    assert mining.indices.tolist() == [[1, -1]]


def test_random_negatives_are_seeded_uniform_survivors():
    scores = torch.tensor([[0.5, 0.4, 0.3, 0.2, 0.1, 0.9, 0.0]])
    positive = torch.tensor([0])

    def draw(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return mine_negatives(scores, positive, 2, 0.1, "random", generator).indices[0].tolist()

    assert draw(3) == draw(3)
    chosen = [tuple(sorted(draw(seed))) for seed in range(200)]
    assert all(5 not in pair and 0 not in pair and pair[0] != pair[1] for pair in chosen)
    counts = np.bincount([j for pair in chosen for j in pair], minlength=7)
    # 5 survivors, 2 picks each: every survivor expected 80 times out of 200 draws.
    assert all(50 < counts[j] < 110 for j in (1, 2, 3, 4, 6)), counts
    everything = mine_negatives(scores, positive, 8, 0.1, "random", torch.Generator().manual_seed(0))
    assert sorted(everything.indices[0][everything.indices[0] >= 0].tolist()) == [1, 2, 3, 4, 6]


def test_gradient_flows_only_through_the_positive_and_the_chosen_negatives():
    query, candidates = _hand_inputs()
    query.requires_grad_()
    candidates.requires_grad_()
    # Similarity -1/sqrt(3) to every query: the least similar candidate, never among the k = 1 hardest.
    extra = torch.tensor([[-1.0, -1.0, -1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = hard_negative_infonce(query, candidates, 0.1, 1, extra_candidates=extra)
    loss.backward()
    assert torch.all(extra.grad == 0)
    assert query.grad.abs().sum() > 0 and candidates.grad.abs().sum() > 0
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(4, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, c: hard_negative_infonce(q, c, 0.2, 2, 0.05), (q, c))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"negatives": "semi-hard"}, "negatives must be one of"),
        ({"num_hard_negatives": 0}, "num_hard_negatives"),
        ({"false_negative_margin": float("nan")}, "false_negative_margin"),
        ({"temperature": -0.02}, "temperature"),
        ({"extra_candidates": torch.randn(2, 3)}, "extra_candidates has dim 3"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        hard_negative_infonce(torch.randn(4, 8), torch.randn(4, 8), **kwargs)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="same non-empty shape"):
        hard_negative_infonce(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"positive_index must lie in \[0, 3\)"):
        mine_negatives(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="positive_index must be an integer tensor"):
        mine_negatives(torch.randn(2, 3), torch.tensor([0.0, 1.0]))


class _LinearEncoder(nn.Module):
    """A stand-in for a SentenceTransformer: features {"x": [B, 6]} -> {"sentence_embedding": [B, 4]}."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(6, 4).double()

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"sentence_embedding": self.linear(features["x"])}


def _columns(rows: int, count: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(11)
    return [{"x": torch.randn(rows, 6, generator=generator, dtype=torch.float64)} for _ in range(count)]


def test_loss_class_matches_the_function_and_reports_statistics():
    model = _LinearEncoder()
    columns = _columns(6, 3)
    loss_fn = HardNegativeInfoNCELoss(model, num_hard_negatives=3, false_negative_margin=0.05)
    loss = loss_fn(columns)
    query, positive, negative = (model(c)["sentence_embedding"] for c in columns)
    expected = hard_negative_infonce(query, positive, 0.02, 3, 0.05, extra_candidates=negative)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    scores = F.normalize(query) @ F.normalize(torch.cat([positive, negative])).T
    mining = mine_negatives(scores, torch.arange(6), 3, 0.05)
    assert torch.equal(loss_fn.last_mining.indices, mining.indices)
    expected_stats = {
        "false_negative_rate": mining.dropped.sum().item() / (6 * 11),
        "duplicate_rate": 0.0,
        "negative_similarity": scores[mining.selected].mean().item(),
        "positive_similarity": scores.diagonal().mean().item(),
    }
    assert loss_fn.last_stats == pytest.approx(expected_stats)


@pytest.mark.parametrize("negatives", ["hard", "all"])
def test_cached_and_uncached_loss_class_give_the_same_gradients(negatives):
    results = []
    for mini_batch_size in (None, 2):
        model = _LinearEncoder()
        loss = HardNegativeInfoNCELoss(model, 0.05, 2, negatives=negatives, mini_batch_size=mini_batch_size)(
            _columns(7, 3)
        )
        loss.backward()
        results.append((loss.item(), model.linear.weight.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-12)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-12)
    assert results[0][1].abs().sum() > 0


def test_loss_class_rejects_a_single_column_and_reports_its_config():
    loss = HardNegativeInfoNCELoss(_LinearEncoder(), mini_batch_size=4)
    with pytest.raises(ValueError, match="query, positive"):
        loss(_columns(4, 1))
    assert loss.get_config_dict() == {
        "temperature": 0.02,
        "num_hard_negatives": 8,
        "false_negative_margin": 0.1,
        "negatives": "hard",
        "exclude_duplicates": True,
        "mini_batch_size": 4,
        "gather_across_devices": True,
    }
    with pytest.raises(ValueError, match="negatives must be one of"):
        HardNegativeInfoNCELoss(_LinearEncoder(), negatives="hardest")


# Copies of the positive: classification and VQA batches repeat the same answer text.


def _class_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A perfect encoder on 6 rows of 3 classes: each query equals its class vector, and so does each
    positive, so rows of the same class have identical positives (content ids = class)."""
    classes = torch.tensor([0, 1, 2, 0, 1, 2])
    vectors = torch.eye(3, dtype=torch.float64)[classes]
    return vectors.clone(), vectors.clone(), classes


def test_copies_of_the_positive_floor_the_margin_rule_and_ids_remove_the_floor():
    query, positive, classes = _class_batch()
    # Margin rule alone: the copy scores exactly S[i, i] = 1, survives the filter, and is the hardest
    # negative; with k = 1 every row's loss is log(1 + e^0) = ln 2, whatever the temperature.
    plain = hard_negative_infonce(query, positive, temperature=0.02, num_hard_negatives=1)
    assert plain.item() == pytest.approx(math.log(2), abs=1e-12)
    # With content ids the copy is excluded; the hardest negative is another class at S = 0.
    fixed = hard_negative_infonce(query, positive, temperature=0.02, num_hard_negatives=1, candidate_ids=classes)
    assert fixed.item() == pytest.approx(math.log1p(math.exp(-1 / 0.02)), abs=1e-15)


def test_duplicates_are_reported_and_never_selected_in_any_mode():
    _, _, classes = _class_batch()
    scores = torch.tensor(np.random.default_rng(3).uniform(-1, 1, (6, 6)))
    same = classes[:, None] == classes[None, :]
    for negatives in ("hard", "easy", "random", "all"):
        mining = mine_negatives(scores, torch.arange(6), 8, 0.1, negatives, torch.Generator().manual_seed(0), same)
        expected = same & ~torch.eye(6, dtype=torch.bool)
        assert torch.equal(mining.duplicates, expected), negatives
        assert not (mining.selected & mining.duplicates).any(), negatives
        assert not (mining.dropped & mining.duplicates).any(), negatives
        chosen = mining.indices[mining.indices >= 0]
        assert chosen.numel() == int(mining.selected.sum()), negatives
    all_mode = mine_negatives(scores, torch.arange(6), negatives="all", same_as_positive=same)
    # "all": every candidate but the positive and its one copy, in column order, padded with -1.
    assert all_mode.indices[0].tolist() == [1, 2, 4, 5, -1]
    with pytest.raises(ValueError, match="same_as_positive"):
        mine_negatives(scores, torch.arange(6), same_as_positive=same[:, :5])


def test_the_loss_class_reads_content_ids_from_the_label_column():
    model = _LinearEncoder()
    columns = _columns(6, 3)
    query, positive, negative = (model(c)["sentence_embedding"] for c in columns)
    ids = torch.tensor([[3, 10], [4, 11], [3, 12], [5, 13], [4, 3], [6, 14]])
    loss_fn = HardNegativeInfoNCELoss(model, num_hard_negatives=3)
    loss = loss_fn(columns, ids)
    expected = hard_negative_infonce(query, positive, 0.02, 3, 0.1, extra_candidates=negative,
                                     candidate_ids=torch.cat([ids[:, 0], ids[:, 1]]))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    duplicates = loss_fn.last_mining.duplicates
    # Row 0's positive (id 3) reappears as positive 2 and as row 4's explicit negative (column 6 + 4).
    assert duplicates[0].nonzero().flatten().tolist() == [2, 10]
    assert loss_fn.last_stats["duplicate_rate"] == pytest.approx(duplicates.sum().item() / (6 * 11))
    # One id per row: the explicit negatives count as unknown content.
    loss_fn(columns, ids[:, 0])
    assert loss_fn.last_mining.duplicates[0].nonzero().flatten().tolist() == [2]
    # Switched off, the labels are ignored and the plain margin rule applies.
    off = HardNegativeInfoNCELoss(model, num_hard_negatives=3, exclude_duplicates=False)
    plain = hard_negative_infonce(query, positive, 0.02, 3, 0.1, extra_candidates=negative)
    assert off(columns, ids).item() == pytest.approx(plain.item(), abs=1e-12)
    assert not off.last_mining.duplicates.any()


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 5.0]), "integer content ids"),
        (torch.tensor([1, 2, 3]), "integer content ids"),
        (torch.tensor([[1, 2, 3]] * 6), "3 ids per row but the batch has 2"),
        (torch.tensor([1, 2, 3, 4, 5, -1]), "non-negative"),
    ],
)
def test_bad_content_ids_are_named(labels, message):
    loss_fn = HardNegativeInfoNCELoss(_LinearEncoder())
    with pytest.raises(ValueError, match=message):
        loss_fn(_columns(6, 3), labels)


def test_cached_loss_with_content_ids_matches_the_plain_loss():
    ids = torch.tensor([0, 1, 0, 2, 1, 3, 0])
    results = []
    for mini_batch_size in (None, 3):
        model = _LinearEncoder()
        loss_fn = HardNegativeInfoNCELoss(model, 0.05, 2, mini_batch_size=mini_batch_size)
        loss = loss_fn(_columns(7, 2), ids)
        loss.backward()
        results.append((loss.item(), model.linear.weight.grad.clone(), loss_fn.last_mining.duplicates))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-12)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-12)
    assert torch.equal(results[0][2], results[1][2]) and results[0][2].any()


def _official_loss(query: torch.Tensor, positive: torch.Tensor, tau: float = 0.02, k: int = 8,
                   beta: float = 0.1) -> torch.Tensor:
    """The official stage-2 example ``loss.py`` as docs/method.md, "Stage 2 loss", states it: cosine matrix of the in-batch
    (query, positive) pairs, candidates above positive + beta masked to -inf, the positive itself
    masked, ``topk`` k of what is left, cross-entropy over [positive, k hard negatives] / tau."""
    scores = F.normalize(query, dim=-1) @ F.normalize(positive, dim=-1).T
    positives = scores.diagonal()
    masked = scores.masked_fill(scores > positives[:, None] + beta, float("-inf"))
    masked = masked.masked_fill(torch.eye(len(scores), dtype=torch.bool), float("-inf"))
    hard = masked.topk(k, dim=1).values
    logits = torch.cat([positives[:, None], hard], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(scores), dtype=torch.long))


@pytest.mark.parametrize(("rows", "k", "beta"), [(24, 8, 0.1), (12, 3, 0.05)])
def test_equals_the_official_loss_when_every_row_keeps_k_survivors(rows, k, beta):
    # Where the official topk never reaches a masked entry (>= k survivors per row), the two agree
    # exactly, value and gradient; explicit negatives and content ids (ours) are left out here.
    generator = torch.Generator().manual_seed(21)
    query = torch.randn(rows, 16, generator=generator, dtype=torch.float64)
    positive = (query + 1.2 * torch.randn(rows, 16, generator=generator, dtype=torch.float64)).requires_grad_()
    query.requires_grad_()
    scores = (F.normalize(query) @ F.normalize(positive).T).detach()
    survivors = (~(scores > scores.diagonal()[:, None] + beta)).sum(dim=1) - 1
    dropped = (scores > scores.diagonal()[:, None] + beta).sum()
    assert bool((survivors >= k).all()) and dropped > 0  # the filter is exercised, topk never starves
    official = _official_loss(query, positive, 0.02, k, beta)
    ours = hard_negative_infonce(query, positive, 0.02, k, beta)
    assert ours.item() == pytest.approx(official.item(), abs=1e-12)
    grads = [torch.autograd.grad(loss, (query, positive)) for loss in (official, ours)]
    for official_grad, our_grad in zip(*grads, strict=True):
        torch.testing.assert_close(our_grad, official_grad, rtol=0, atol=1e-12)
    # The sentence-transformers loss class, with its defaults (exclude_duplicates, no ids), too.
    identity = _Identity()
    features = [{"x": query.detach()}, {"x": positive.detach()}]
    loss_class = HardNegativeInfoNCELoss(identity, temperature=0.02, num_hard_negatives=k, false_negative_margin=beta)
    assert loss_class(features).item() == pytest.approx(official.item(), abs=1e-12)


class _Identity(nn.Module):
    """Features {"x": embeddings} -> the same embeddings."""

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"sentence_embedding": features["x"]}
