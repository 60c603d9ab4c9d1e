"""Evaluation metrics: accuracy, macro F1 / precision / recall, loss, throughput."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor


def classification_scores(predictions: Tensor, labels: Tensor, num_classes: int | None = None) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1.

    A class that is never predicted has precision 0; a class absent from the labels is left out
    of the macro averages (as scikit-learn does with ``labels`` set to the classes present).
    """
    predictions = predictions.reshape(-1).long().cpu()
    labels = labels.reshape(-1).long().cpu()
    if predictions.numel() != labels.numel():
        raise ValueError(f"{predictions.numel()} predictions for {labels.numel()} labels")
    if labels.numel() == 0:
        raise ValueError("no examples to score")
    k = int(num_classes or int(max(predictions.max(), labels.max())) + 1)
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    tp = confusion.diag().double()
    predicted = confusion.sum(0).double()
    actual = confusion.sum(1).double()
    present = actual > 0
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = tp / actual.clamp_min(1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                     torch.zeros_like(tp))
    return {
        "accuracy": float(tp.sum() / labels.numel()),
        "f1": float(f1[present].mean()),
        "precision": float(precision[present].mean()),
        "recall": float(recall[present].mean()),
    }


@torch.no_grad()
def evaluate_classifier(forward: Callable[[Mapping[str, Any]], Tensor], batches: Iterable[Mapping[str, Any]],
                        num_classes: int | None = None) -> dict[str, float]:
    """Run ``forward`` (batch → logits) over ``batches``; scores, mean CE loss, examples/s."""
    preds, labels, loss_sum, n = [], [], 0.0, 0
    start = time.perf_counter()
    for batch in batches:
        logits = forward(batch)
        y = batch["labels"].to(logits.device)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        n += y.numel()
        preds.append(logits.argmax(-1).cpu())
        labels.append(y.cpu())
    seconds = time.perf_counter() - start
    if n == 0:
        raise ValueError("evaluation data is empty")
    scores = classification_scores(torch.cat(preds), torch.cat(labels), num_classes)
    scores["loss"] = loss_sum / n
    scores["examples_per_second"] = n / seconds if seconds > 0 else float("nan")
    return scores
