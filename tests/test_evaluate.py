"""classification_scores and evaluate_classifier against hand-computed and reference values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from metakd.evaluate import classification_scores, evaluate_classifier


def reference_scores(predictions: list[int], labels: list[int]) -> dict[str, float]:
    """Plain-Python accuracy and macro precision/recall/F1 over the classes present in ``labels``."""
    classes = sorted(set(labels))
    p_list, r_list, f_list = [], [], []
    for c in classes:
        tp = sum(1 for p, y in zip(predictions, labels) if p == c and y == c)
        n_pred = sum(1 for p in predictions if p == c)
        n_true = sum(1 for y in labels if y == c)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        p_list.append(precision)
        r_list.append(recall)
        f_list.append(f1)
    return {
        "accuracy": sum(p == y for p, y in zip(predictions, labels)) / len(labels),
        "precision": sum(p_list) / len(classes),
        "recall": sum(r_list) / len(classes),
        "f1": sum(f_list) / len(classes),
    }


def _scores(preds, labels, num_classes=None):
    return classification_scores(torch.tensor(preds), torch.tensor(labels), num_classes)


def _assert_scores(got: dict, expected: dict):
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


# ---------------------------------------------------------------------------- hand-computed
def test_perfect_predictions():
    _assert_scores(_scores([0, 1, 2, 1], [0, 1, 2, 1]), {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0})


def test_class_never_predicted():
    # labels 0 0 1 1 2 2, predictions 0 1 1 1 0 0: class 2 is never predicted.
    # class 0: tp 1, predicted 3, actual 2 -> P 1/3, R 1/2, F1 2/5
    # class 1: tp 2, predicted 3, actual 2 -> P 2/3, R 1,   F1 4/5
    # class 2: tp 0, predicted 0, actual 2 -> P 0,   R 0,   F1 0
    got = _scores([0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 2, 2])
    _assert_scores(got, {"accuracy": 3 / 6, "precision": (1 / 3 + 2 / 3 + 0) / 3, "recall": (1 / 2 + 1 + 0) / 3,
                         "f1": (2 / 5 + 4 / 5 + 0) / 3})
    assert set(got) == {"accuracy", "precision", "recall", "f1", "mcc"}
    assert all(isinstance(v, float) for v in got.values())


def test_binary_example():
    # labels 1 1 1 0 0, predictions 1 0 1 1 0
    # class 1: tp 2, predicted 3, actual 3 -> P 2/3, R 2/3, F1 2/3
    # class 0: tp 1, predicted 2, actual 2 -> P 1/2, R 1/2, F1 1/2
    got = _scores([1, 0, 1, 1, 0], [1, 1, 1, 0, 0])
    _assert_scores(got, {"accuracy": 3 / 5, "precision": (2 / 3 + 1 / 2) / 2, "recall": (2 / 3 + 1 / 2) / 2,
                         "f1": (2 / 3 + 1 / 2) / 2})


def test_class_absent_from_labels_is_left_out_of_macro_average():
    # class 2 is predicted once but never a label: it is left out; its false positive lowers class 0's recall.
    # class 0: tp 1, predicted 1, actual 2 -> P 1, R 1/2, F1 2/3 ; class 1: P 1, R 1, F1 1
    got = _scores([0, 2, 1], [0, 0, 1], num_classes=3)
    _assert_scores(got, {"accuracy": 2 / 3, "precision": 1.0, "recall": 3 / 4, "f1": (2 / 3 + 1) / 2})


def test_num_classes_larger_than_seen_changes_nothing():
    preds, labels = [0, 1, 1, 0, 1], [0, 1, 0, 0, 1]
    assert _scores(preds, labels, num_classes=7) == _scores(preds, labels)


def test_accepts_any_shape_and_dtype():
    preds = torch.tensor([[0, 1], [1, 1]], dtype=torch.int32)
    labels = torch.tensor([[0, 1], [0, 1]], dtype=torch.int64)
    assert _scores([0, 1, 1, 1], [0, 1, 0, 1]) == classification_scores(preds, labels)


def test_empty_input_raises():
    with pytest.raises(ValueError, match="no examples"):
        classification_scores(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        classification_scores(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))


def test_matthews_correlation_by_hand():
    # binary: tp=2, tn=1, fp=1, fn=1 -> (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert _scores([1, 1, 0, 1, 0], [1, 1, 0, 0, 1])["mcc"] == pytest.approx(1 / 6, abs=1e-12)
    assert _scores([0, 1, 2, 1], [0, 1, 2, 1])["mcc"] == pytest.approx(1.0)
    assert _scores([1, 0, 1, 0], [0, 1, 0, 1])["mcc"] == pytest.approx(-1.0)
    # one predicted class (a collapsed model): no correlation, not a division by zero
    assert _scores([1, 1, 1, 1], [0, 1, 0, 1])["mcc"] == 0.0


# ---------------------------------------------------------------------------- properties
pairs = st.integers(1, 40).flatmap(
    lambda n: st.tuples(st.lists(st.integers(0, 4), min_size=n, max_size=n),
                        st.lists(st.integers(0, 4), min_size=n, max_size=n)))


@settings(max_examples=50, deadline=None)
@given(pair=pairs)
def test_matches_reference_implementation(pair):
    preds, labels = pair
    got = _scores(preds, labels)
    _assert_scores(got, reference_scores(preds, labels))
    for key, value in got.items():
        assert (-1.0 if key == "mcc" else 0.0) <= value <= 1.0, key


def test_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")

    @settings(max_examples=30, deadline=None)
    @given(pair=pairs)
    def check(pair):
        preds, labels = pair
        present = sorted(set(labels))
        got = _scores(preds, labels)
        assert got["accuracy"] == pytest.approx(metrics.accuracy_score(labels, preds), abs=1e-12)
        for key, fn in (("precision", metrics.precision_score), ("recall", metrics.recall_score),
                        ("f1", metrics.f1_score)):
            expected = fn(labels, preds, labels=present, average="macro", zero_division=0)
            assert got[key] == pytest.approx(expected, abs=1e-12), key
        assert got["mcc"] == pytest.approx(metrics.matthews_corrcoef(labels, preds), abs=1e-12)

    check()
    # the hand example with a class never predicted, too
    preds, labels = [0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 2, 2]
    assert _scores(preds, labels)["f1"] == pytest.approx(
        metrics.f1_score(labels, preds, average="macro", zero_division=0), abs=1e-12)


# ---------------------------------------------------------------------------- evaluate_classifier
LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0], [0.5, 0.4], [-1.0, 1.0]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 1, 0])  # predictions 0 1 0 0 1


def _batches(sizes=(2, 3)):
    out, start = [], 0
    for size in sizes:
        idx = torch.arange(start, start + size)
        out.append({"index": idx, "labels": LABELS[idx]})
        start += size
    return out


def _forward(batch):
    return LOGITS[batch["index"]]


def test_evaluate_classifier_on_fixed_logits():
    scores = evaluate_classifier(_forward, _batches())
    # class 0: tp 1, predicted 3, actual 2 -> P 1/3, R 1/2, F1 2/5
    # class 1: tp 1, predicted 2, actual 3 -> P 1/2, R 1/3, F1 2/5
    assert scores["accuracy"] == pytest.approx(2 / 5)
    assert scores["precision"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert scores["recall"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert scores["f1"] == pytest.approx(2 / 5)
    assert scores["loss"] == pytest.approx(float(F.cross_entropy(LOGITS, LABELS)), rel=1e-6)
    assert "examples_per_second" in scores
    eps = scores["examples_per_second"]
    assert math.isnan(eps) or eps > 0


def test_evaluate_classifier_independent_of_batching():
    a = evaluate_classifier(_forward, _batches((2, 3)))
    b = evaluate_classifier(_forward, _batches((1, 1, 1, 1, 1)))
    c = evaluate_classifier(_forward, _batches((5,)))
    for key in ("accuracy", "precision", "recall", "f1", "loss"):
        assert a[key] == pytest.approx(b[key], rel=1e-6) == c[key]


def test_evaluate_classifier_runs_without_grad():
    weight = torch.ones(2, requires_grad=True)
    seen = []

    def forward(batch):
        out = LOGITS[batch["index"]].float() * weight
        seen.append(out.requires_grad)
        return out

    evaluate_classifier(forward, _batches())
    assert seen and not any(seen)


def test_evaluate_classifier_num_classes_passed_through():
    with_k = evaluate_classifier(_forward, _batches(), num_classes=4)
    without = evaluate_classifier(_forward, _batches())
    for key in ("accuracy", "precision", "recall", "f1"):
        assert with_k[key] == without[key]


def test_evaluate_classifier_empty_raises():
    with pytest.raises(ValueError, match="empty"):
        evaluate_classifier(_forward, [])
