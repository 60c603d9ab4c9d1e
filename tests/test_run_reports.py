"""What a run tells its user: which limit stops training, and a teacher that learned nothing."""

from __future__ import annotations

from metakd.evaluate import collapse_warning, majority_rate
from metakd.finetune import step_plan


def test_step_plan_names_the_limit_that_stops():
    # the case: 1 epoch of 57 batches with max_steps 60 runs 57 steps, and says so
    steps, why = step_plan(57 * 32, 32, 1, 60)
    assert steps == 57 and "end it before max_steps 60 is reached" in why
    steps, why = step_plan(100, 32, 3, 5)
    assert steps == 5 and why.startswith("5 steps: max_steps 5 stops it before the end of 3 epoch(s) of 4 batch(es)")
    assert step_plan(100, 32, 2, None) == (8, "8 steps: 2 epoch(s) of 4 batch(es) of 32")
    assert step_plan(64, 32, 1, 2)[1].endswith("which is max_steps too")


def test_collapse_warning_within_a_point_of_the_majority_rate():
    labels = [0] * 60 + [1] * 40
    assert majority_rate(labels) == 0.6
    warning = collapse_warning({"accuracy": 0.605, "recall": 0.5}, labels)
    assert warning is not None and "majority-class rate 0.600" in warning and "finetune.lr" in warning
    assert collapse_warning({"accuracy": 0.62, "recall": 0.55}, labels) is None


def test_collapse_warning_on_a_chance_corrected_measure():
    """The issue's MRPC teacher: 70.6% against a 68.4% majority passed silently; its MCC is 0.20."""
    import torch

    from metakd.evaluate import MCC_FLOOR, classification_scores

    # MRPC's 408 validation pairs, 279 paraphrases (1): the teacher gets 271 of them and 17 of the 129 others
    labels = torch.tensor([1] * 279 + [0] * 129)
    predictions = torch.tensor([1] * 271 + [0] * 8 + [0] * 17 + [1] * 112)
    scores = classification_scores(predictions, labels)
    assert (round(scores["accuracy"], 3), round(scores["mcc"], 2), round(scores["f1"], 2)) == (0.706, 0.20, 0.52)
    assert scores["accuracy"] > majority_rate(labels.tolist()) + 0.01  # the old test passes it
    warning = collapse_warning(scores, labels.tolist())
    assert warning is not None and "Matthews correlation 0.20 is below 0.3" in warning, warning
    assert "majority-class rate 0.684" in warning and "finetune.lr" in warning
    # a teacher that learned the task is left alone
    good = classification_scores(torch.tensor([1] * 250 + [0] * 29 + [0] * 90 + [1] * 39), labels)
    assert good["mcc"] > MCC_FLOOR and collapse_warning(good, labels.tolist()) is None


def test_distill_plan_counts_the_batches_fit_trains_on():
    # 100 distinct examples: the quiz split takes 10, validation 0.2 of the other 90 = 18, leaving 72 = 8 batches of 10
    import torch

    from metakd.config import DistillConfig
    from metakd.run import _distill_plan

    data = [{"input_ids": torch.tensor([i, i + 1]), "labels": torch.tensor(i % 2)} for i in range(100)]
    plan = _distill_plan(DistillConfig(batch_size=10, epochs=2, quiz_fraction=0.1, validation_fraction=0.2), data, [])
    assert plan.startswith("16 steps: 2 epoch(s) of 8 batch(es) (after the 0.1 quiz and 0.2 validation splits)"), plan
    plan = _distill_plan(DistillConfig(batch_size=10, epochs=2, quiz_fraction=0.1), data)
    assert plan.startswith("18 steps: 2 epoch(s) of 9 batch(es) (after the 0.1 quiz split)"), plan
