"""Evaluation metrics: accuracy, macro-averaged F1 / precision / recall, Matthews correlation,
loss, throughput; perplexity and generation speed of causal LMs."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from . import losses


def classification_scores(predictions: Tensor, labels: Tensor, num_classes: int | None = None) -> dict[str, float]:
    """Accuracy, macro-averaged precision, recall and F1, and Matthews correlation (``mcc``).

    F1, precision and recall are macro averages: the unweighted mean over classes, so a rare
    class counts as much as a common one. A class that is never predicted has precision 0; a
    class absent from the labels is left out of the macro averages (as scikit-learn does with
    ``labels`` set to the classes present). ``mcc`` is the multi-class Matthews correlation
    (Gorodkin's R_K, scikit-learn's ``matthews_corrcoef``; the standard metric of acceptability
    tasks such as CoLA): 1 perfect, 0 no better than chance (and 0 when all predictions or all
    labels are one class), -1 always wrong on two classes.
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
        "mcc": matthews_correlation(confusion),
    }


def matthews_correlation(confusion: Tensor) -> float:
    """Multi-class Matthews correlation of a confusion matrix (rows: true class, columns: predicted)."""
    c = confusion.double()
    n = c.sum()
    correct = c.diag().sum()
    predicted, actual = c.sum(0), c.sum(1)
    cov = correct * n - (predicted * actual).sum()
    denominator = torch.sqrt((n * n - (predicted * predicted).sum()) * (n * n - (actual * actual).sum()))
    return float(cov / denominator) if float(denominator) > 0 else 0.0


def majority_rate(labels: Iterable[int]) -> float:
    """The accuracy of always predicting the most frequent label."""
    counts: dict[int, int] = {}
    for y in labels:
        counts[int(y)] = counts.get(int(y), 0) + 1
    if not counts:
        raise ValueError("no labels")
    return max(counts.values()) / sum(counts.values())


MCC_FLOOR = 0.3
"""Below this Matthews correlation a classifier agrees with the labels little beyond chance
(0: chance, 1: perfect); fine-tuned GLUE teachers score 0.5 (CoLA) to 0.9 (SST-2)."""

_ADVICE = ("fine-tune it longer (finetune.epochs, finetune.max_steps), try another finetune.lr (e.g. 2e-5 or 1e-4), "
           "or give it more data (finetune.n_train)")


def collapse_warning(scores: Mapping[str, float], labels: Iterable[int], role: str = "teacher",
                     margin: float = 0.01, mcc_floor: float = MCC_FLOOR) -> str | None:
    """A warning when a classifier learned little beyond the class prior; else None. Two tests:
    accuracy within ``margin`` of the majority-class rate (often every prediction is one class),
    and, chance-corrected, a Matthews correlation (``scores["mcc"]``) below ``mcc_floor``: on
    unbalanced labels accuracy a few points above the majority rate can still be near chance
    (an MRPC teacher at 70.6% against a 68.4% majority has MCC 0.20)."""
    rate = majority_rate(labels)
    accuracy = float(scores["accuracy"])
    mcc = scores.get("mcc")
    measured = (f"accuracy {accuracy:.3f}, majority-class rate {rate:.3f}"
                + (f", MCC {float(mcc):.2f}" if mcc is not None else "")
                + f", macro F1 {float(scores.get('f1', float('nan'))):.3f}"
                + f", macro recall {float(scores.get('recall', float('nan'))):.3f}")
    if accuracy <= rate + margin:
        return (f"the {role} is no better than predicting the majority class ({measured}): its soft labels carry "
                f"little; {_ADVICE}")
    if mcc is not None and float(mcc) < mcc_floor:
        return (f"the {role} agrees with the labels little beyond chance: Matthews correlation {float(mcc):.2f} is "
                f"below {mcc_floor:g} ({measured}); its soft labels carry little; {_ADVICE}")
    return None


@torch.no_grad()
def evaluate_classifier(forward: Callable[[Mapping[str, Any]], Tensor], batches: Iterable[Mapping[str, Any]],
                        num_classes: int | None = None,
                        count_tokens: Callable[[Mapping[str, Any]], int] | None = None) -> dict[str, float]:
    """Run ``forward`` (batch → logits) over ``batches``; scores, mean CE loss (the NLL),
    examples/s, and tokens/s when ``count_tokens`` (batch → number of real input tokens) is given.
    Throughput is wall time of the whole pass (forward, loss, argmax) without gradients."""
    preds, labels, loss_sum, n, tokens = [], [], 0.0, 0, 0
    start = time.perf_counter()
    for batch in batches:
        if count_tokens is not None:
            tokens += int(count_tokens(batch))
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
    if count_tokens is not None:
        scores["tokens_per_second"] = tokens / seconds if seconds > 0 else float("nan")
    return scores


@torch.no_grad()
def evaluate_lm(forward: Callable[[Mapping[str, Any]], Tensor], batches: Iterable[Mapping[str, Any]],
                chunk_size: int | None = 1024) -> dict[str, float]:
    """Next-token loss and perplexity of a causal LM over ``batches`` (position t predicts
    ``labels[:, t + 1]``, -100 ignored), weighted by token, its next-token (top-1) accuracy, and
    evaluated tokens/s."""
    loss_sum, n, correct = 0.0, 0, 0
    start = time.perf_counter()
    for batch in batches:
        logits = forward(batch)
        labels = batch["labels"].to(logits.device)
        real = labels[:, 1:] != -100
        count = int(real.sum())
        if count:
            loss_sum += float(losses.next_token_ce(logits.float(), labels, chunk_size)) * count
            correct += int(((logits[:, :-1].argmax(-1) == labels[:, 1:]) & real).sum())
            n += count
    seconds = time.perf_counter() - start
    if n == 0:
        raise ValueError("evaluation data has no tokens to predict")
    loss = loss_sum / n
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "next_token_accuracy": correct / n, "tokens": float(n),
            "tokens_per_second": n / seconds if seconds > 0 else float("nan")}


def real_tokens(inputs: Mapping[str, Tensor]) -> int:
    """Input tokens that are not padding (all of them without an attention mask)."""
    mask = inputs.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())


def evaluate_model(model: Any, data: Any, *, task: str = "classification", batch_size: int = 64,
                   pad: int | Mapping[str, int] = 0, side: str = "teacher", num_labels: int | None = None,
                   lm_chunk_size: int | None = 1024, device: "torch.device | str | None" = None) -> dict[str, float]:
    """Scores of ``model`` on ``data`` (encoded examples, or an iterable of collated batches such as
    a DataLoader) as ``task`` measures them: accuracy, macro F1/precision/recall, Matthews correlation
    (``mcc``), loss, examples/s and
    tokens/s for classification; next-token loss, perplexity and tokens/s for ``"causal_lm"``.

    Reads the ``side`` ("teacher" or "student") inputs of split-tokenizer batches; ``pad`` is the
    padding id (or one per side) used to collate examples. The model runs in eval mode and is put
    back in the mode it was in. The one evaluation path of MetaDistiller, the run files, the
    teacher fine-tuning and the compression pipeline.
    """
    from torch.utils.data import DataLoader

    from . import data as data_mod
    from .forward import model_inputs, to_device

    if side not in ("teacher", "student"):
        raise ValueError(f"side must be 'teacher' or 'student', got {side!r}")
    if device is None:
        device = next(model.parameters()).device
    if num_labels is None:
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    forward = lambda b: model(**model_inputs(b, side)).logits  # noqa: E731
    was_training = model.training
    model.eval()
    # building and iterating a DataLoader draws from the global RNG: evaluating must not shift a
    # training stream
    with torch.random.fork_rng(devices=[]):
        try:
            if not isinstance(data, DataLoader):
                data = data_mod.loader(data, batch_size, data_mod.make_collator(pad), shuffle=False, seed=0)
            batches = (to_device(b, device) for b in data)
            if task == "causal_lm":
                return evaluate_lm(forward, batches, lm_chunk_size)
            return evaluate_classifier(forward, batches, num_labels,
                                       count_tokens=lambda b: real_tokens(model_inputs(b, side)))
        finally:
            model.train(was_training)


@torch.no_grad()
def generation_speed(model: Any, prompts: Tensor, max_new_tokens: int = 32, warmup: bool = True) -> dict[str, float]:
    """Greedy generation throughput: ``max_new_tokens`` new tokens for each row of ``prompts``
    (``[B, P]`` token ids, no padding), timed after one warm-up call; returns new tokens/s."""
    if prompts.dim() != 2 or prompts.numel() == 0:
        raise ValueError(f"prompts must be a non-empty [B, P] tensor of token ids, got shape {tuple(prompts.shape)}")
    device = next(model.parameters()).device
    prompts = prompts.to(device)
    mask = torch.ones_like(prompts)
    was_training = model.training
    model.eval()
    settings = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=getattr(model.config, "pad_token_id", None) or 0)
    try:
        if warmup:
            model.generate(prompts[:1], attention_mask=mask[:1], **dict(settings, max_new_tokens=2, min_new_tokens=2))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = model.generate(prompts, attention_mask=mask, **settings)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    new_tokens = (out.shape[1] - prompts.shape[1]) * out.shape[0]
    return {"generated_tokens": float(new_tokens), "seconds": seconds,
            "generation_tokens_per_second": new_tokens / seconds if seconds > 0 else float("nan")}
