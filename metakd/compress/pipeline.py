"""distill → prune → (recovery distillation) → quantize → evaluate, from one run file.

``metakd compress RUN.yaml`` runs it: the student distilled by ``metakd distill`` (in
``OUTPUT/distilled``; distilled first when it is not there) is pruned and quantized as the
file's ``compress:`` section says. Every stage is saved under ``OUTPUT/compressed/STAGE``
(``metakd.compress.load_compressed`` loads any of them) and scored: parameters, non-zero
parameters, bytes on disk, accuracy/F1 (or perplexity) and inference throughput. The last stage
is loaded back from disk and scored again, so the report shows that the saved model is the one
that was measured. The report goes to ``OUTPUT/compression.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError

DERIVED_STUDENTS = ("layers", "alternate", "first", "last", "random")
"""Student specs built from the teacher: they share its tokenizer."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check(run) -> None:
    """Refuse a ``compress:`` section that cannot work, before any model is loaded."""
    cc = run.compress
    if cc.prune == "none" and cc.quantize == "none":
        raise ConfigError("compress: nothing to do; set compress.prune (magnitude | structured) and/or "
                          "compress.quantize (minmax | dynamic_int8 | bnb8 | bnb4)")
    if cc.recovery_steps and cc.prune == "none":
        raise ConfigError("compress.recovery_steps recovers from pruning; set compress.prune too (or drop it)")
    if cc.quantize in ("bnb8", "bnb4"):
        if cc.prune == "structured":
            raise ConfigError("a structurally pruned student cannot be saved in bitsandbytes format; use "
                              "compress.quantize=minmax or dynamic_int8")
        from ..quantization import require_bitsandbytes

        require_bitsandbytes()


# ---------------------------------------------------------------------------- pieces
def task_loss(task: str) -> Callable[[nn.Module, dict], torch.Tensor]:
    """The student's own task loss on a batch (cross-entropy on the labels, or next-token loss):
    what structured pruning's Taylor importance differentiates."""
    from ..forward import model_inputs
    from ..losses import next_token_ce

    def loss(model: nn.Module, batch: dict) -> torch.Tensor:
        logits = model(**model_inputs(batch, "student")).logits
        if task == "causal_lm":
            return next_token_ce(logits.float(), batch["labels"])
        return F.cross_entropy(logits.float(), batch["labels"])

    return loss


def _pad_ids(teacher_tokenizer, student: nn.Module) -> dict[str, int]:
    pad = teacher_tokenizer.pad_token_id
    s_pad = getattr(student.config, "pad_token_id", None)
    return {"teacher": int(pad or 0), "student": int(s_pad if s_pad is not None else (pad or 0))}


def _numel(p: torch.Tensor) -> int:
    """Elements of a parameter; a bitsandbytes 4-bit one counts the weights it packs."""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else p.numel()


def _parameter_count(model: nn.Module) -> int:
    """Parameters including the weights packed by dynamic-int8 and bitsandbytes layers."""
    n = sum(_numel(p) for p in model.parameters())
    for m in model.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(m, "weight") and callable(m.weight):
            n += m.weight().numel() + (m.bias().numel() if m.bias() is not None else 0)
    return n


def _nonzero(model: nn.Module) -> int | None:
    """Non-zero parameters (None for bitsandbytes models, whose packed codes hide them)."""
    from ..quantization import is_quantized

    if is_quantized(model):
        return None
    n = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    for m in model.modules():
        if getattr(m, "_packed_params", None) is not None and callable(getattr(m, "weight", None)):
            w = m.weight()
            n += int((w.int_repr() != w.q_zero_point()).sum())
            if m.bias() is not None:
                n += int(torch.count_nonzero(m.bias()))
    return n


# ---------------------------------------------------------------------------- the pipeline
class _Stages:
    """Saves, scores and records each stage."""

    def __init__(self, run, data, pad, tokenizer, root: Path):
        self.run, self.data, self.pad, self.tokenizer, self.root = run, data, pad, tokenizer, root
        self.rows: list[dict[str, Any]] = []

    def score(self, model: nn.Module) -> dict[str, float]:
        from ..run import evaluate_model_on

        return evaluate_model_on(self.run, model, self.data, self.pad, side="student")

    def record(self, stage: str, model: nn.Module, save: dict[str, Any], extra: dict[str, Any] | None = None,
               scores: dict[str, float] | None = None) -> dict[str, Any]:
        from .prune import sparsity
        from .storage import bytes_on_disk, save_compressed

        directory = save_compressed(model, self.root / stage, tokenizer=self.tokenizer, **save)
        row = {"stage": stage, "params": _parameter_count(model), "nonzero_params": _nonzero(model),
               "bytes_on_disk": bytes_on_disk(directory), "saved": str(directory),
               "eval": scores if scores is not None else self.score(model), **(extra or {})}
        if save.get("method", "none") == "none":
            row["linear_sparsity"] = sparsity(model)
        if self.run.task == "causal_lm" and self.run.generation_tokens:
            row["generation"] = _generation(model, self.data, self.run.generation_tokens)
        self.rows.append(row)
        _log(f"{stage}: {row['params']:,} params, {row['bytes_on_disk']:,} bytes on disk, "
             + ", ".join(f"{k} {v:.4g}" for k, v in row["eval"].items() if k in ("accuracy", "f1", "perplexity")))
        return row


def _generation(model: nn.Module, data, tokens: int) -> dict[str, float]:
    from ..evaluate import generation_speed
    from ..forward import model_inputs

    prompts = torch.stack([model_inputs(data[i], "student")["input_ids"][:8] for i in range(min(4, len(data)))])
    return generation_speed(model, prompts, tokens)


def _load_student(run, directory: Path, num_labels: int | None):
    from ..models import load_causal_lm, load_classifier

    if run.task == "causal_lm":
        return load_causal_lm(directory)
    return load_classifier(directory, num_labels)


def _recovery_teacher(run, num_labels: int | None) -> nn.Module:
    """The teacher as distillation left it: with its meta-updated LoRA adapters (merged unless it
    is quantized) or the fully meta-updated one."""
    from ..models import load_causal_lm, load_classifier
    from ..quantization import is_quantized
    from ..run import load_teacher

    distilled = Path(run.output) / "distilled"
    if (distilled / "teacher" / "config.json").is_file():
        loader = load_causal_lm if run.task == "causal_lm" else (lambda d: load_classifier(d, num_labels))
        return loader(distilled / "teacher")[0]
    teacher, _ = load_teacher(run, num_labels)
    if (distilled / "teacher_adapters").is_dir():
        from peft import PeftModel

        teacher = PeftModel.from_pretrained(teacher, str(distilled / "teacher_adapters"))
        if not is_quantized(teacher):
            teacher = teacher.merge_and_unload()
    return teacher


def _recover(run, cc, student: nn.Module, train, masks: dict | None, num_labels: int | None, progress: bool) -> dict:
    from ..distiller import MetaDistiller
    from .prune import keep_pruned

    cfg = run.distill.replace(meta_update="none", student_lora=False, feature_layers=None, max_steps=cc.recovery_steps,
                              # max_steps decides when to stop: every epoch has at least one step
                              epochs=cc.recovery_steps, eval_every=None, progress=progress and run.distill.progress,
                              student_lr=cc.recovery_lr or run.distill.student_lr)
    teacher = _recovery_teacher(run, num_labels)
    d = MetaDistiller(teacher, student, cfg, keep_teacher_adapters=True)  # the meta-updated adapters, on purpose
    if masks:
        keep_pruned(d.student_optimizer, d.student, masks)
    history = d.fit(train)
    losses = [m["student_loss"] for m in history["train"]]
    return {"recovery_steps": len(losses), "recovery_loss_first": losses[0] if losses else None,
            "recovery_loss_last": losses[-1] if losses else None}


class Prepared:
    """What every compression of one run starts from: the distilled student, the encoded data
    and the stage recorder's settings."""

    def __init__(self, run, student: nn.Module, encoded: dict[str, Any], pad: dict[str, int], tokenizer: Any,
                 num_labels: int | None):
        self.run, self.student, self.encoded, self.pad = run, student, encoded, pad
        self.tokenizer, self.num_labels = tokenizer, num_labels

    def stages(self, root: Path) -> _Stages:
        return _Stages(self.run, self.encoded["eval"], self.pad, self.tokenizer, root)


def prepare(run, progress: bool = True) -> Prepared:
    """Load the run's distilled student (distilling first when ``OUTPUT/distilled`` has none) and
    encode its data."""
    from transformers import AutoTokenizer

    from ..run import distill, encode_splits, label_count, load_data, teacher_source

    student_dir = Path(run.output) / "distilled" / "student"
    distilled = not (student_dir / "config.json").is_file()
    if distilled:
        _log(f"no distilled student in {student_dir}: distilling first (as `metakd distill` does)")
        distill(run, progress=progress, resume_if_present=True)  # continues an interrupted distillation
    else:
        _log(f"compressing the distilled student in {student_dir}")
    splits = load_data(run, report=not distilled)  # distill has said what it read
    num_labels = label_count(run, splits)
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_source(run))
    if teacher_tokenizer.pad_token_id is None:
        teacher_tokenizer.pad_token = teacher_tokenizer.eos_token
    student, student_tokenizer = _load_student(run, student_dir, num_labels)
    separate = run.task != "causal_lm" and run.student.partition(":")[0] not in DERIVED_STUDENTS \
        and run.student != "alternate"
    encoded = encode_splits(run, splits, teacher_tokenizer, student_tokenizer if separate else None)
    return Prepared(run, student, encoded, _pad_ids(teacher_tokenizer, student), student_tokenizer, num_labels)


def compress_student(prep: Prepared, student: nn.Module, stages: _Stages, cc=None, progress: bool = True,
                     verify: bool = True) -> dict[str, Any]:
    """Prune, recover and quantize ``student`` (changed in place) as ``cc`` (default: the run's
    ``compress:`` section) says, recording each stage in ``stages``; with ``verify`` the last stage
    is loaded back from disk and scored again. Returns the report."""
    from .prune import apply_masks, magnitude_prune
    from .quantize import bnb_quantize, dynamic_int8, quantize_weights
    from .storage import load_compressed

    run = prep.run
    cc = cc or run.compress
    masks, plan = None, None
    if cc.prune == "magnitude":
        masks = magnitude_prune(student, cc.sparsity, cc.prune_scope)
        stages.record("pruned", student, {"method": "none"},
                      {"prune": {"method": "magnitude", "sparsity": cc.sparsity, "scope": cc.prune_scope}})
    elif cc.prune == "structured":
        from ..data import loader, make_collator
        from .structured import prune_structured, structure_of

        batches = []
        for batch in loader(prep.encoded["train"], run.distill.batch_size, make_collator(prep.pad), True,
                            run.distill.seed):
            batches.append(batch)
            if len(batches) >= cc.importance_batches:
                break
        before = structure_of(student)
        plan = prune_structured(student, heads=cc.heads, neurons=cc.neurons, batches=batches,
                                loss_fn=task_loss(run.task), method=cc.importance)
        stages.record("pruned", student, {"method": "none", "plan": plan},
                      {"prune": {"method": "structured", "heads": cc.heads, "neurons": cc.neurons,
                                 "importance": cc.importance, "before": before, "after": structure_of(student)}})
    if cc.prune != "none" and cc.recovery_steps:
        info = _recover(run, cc, student, prep.encoded["train"], masks, prep.num_labels, progress)
        stages.record("recovered", student, {"method": "none", "plan": plan}, info)

    final = student
    if cc.quantize == "minmax":
        codes = quantize_weights(student, cc.bits, cc.granularity, embeddings=cc.quantize_embeddings)
        if masks:
            apply_masks(student, masks)  # a pruned weight stays zero (the saved mask keeps it so)
        stages.record("quantized", student, {"method": "minmax", "codes": codes, "plan": plan},
                      {"quantize": {"method": "minmax", "bits": cc.bits, "granularity": cc.granularity,
                                   "embeddings": cc.quantize_embeddings}})
    elif cc.quantize == "dynamic_int8":
        final = dynamic_int8(student.cpu())
        stages.record("quantized", final, {"method": "dynamic_int8", "plan": plan},
                      {"quantize": {"method": "dynamic_int8", "bits": 8, "granularity": "tensor"}})
    elif cc.quantize in ("bnb8", "bnb4"):
        bits = 8 if cc.quantize == "bnb8" else 4
        final = bnb_quantize(student, bits, cc.bnb_quant_type)
        kept = dict(getattr(final, "metakd_full_precision", {}))  # layers bitsandbytes cannot hold in 4 bits
        stages.record("quantized", final, {"method": cc.quantize, "info": {"full_precision_layers": kept}},
                      {"quantize": {"method": cc.quantize, "bits": bits, "quant_type": cc.bnb_quant_type,
                                    "full_precision_layers": kept}})

    report: dict[str, Any] = {"run": run.to_dict(), "compress": cc.to_dict(), "stages": stages.rows}
    if verify:
        last = stages.rows[-1]
        reloaded = load_compressed(last["saved"], device=next(final.parameters()).device)
        again = stages.score(reloaded)
        keys = [k for k in ("accuracy", "f1", "loss", "perplexity") if k in last["eval"]]
        report["reloaded"] = {"stage": last["stage"], "eval": again,
                              "max_abs_difference": max(abs(again[k] - last["eval"][k]) for k in keys)}
    return report


def compress(run, progress: bool = True) -> dict[str, Any]:
    """Run the compression pipeline of ``run.compress`` on the run's distilled student; returns
    (and writes to ``OUTPUT/compression.json``) one row per stage and the reload check."""
    check(run)
    prep = prepare(run, progress)
    stages = prep.stages(Path(run.output) / "compressed")
    stages.record("distilled", prep.student, {"method": "none"})
    report = compress_student(prep, prep.student, stages, progress=progress)
    (Path(run.output) / "compression.json").write_text(json.dumps(report, indent=2, default=str))
    return report


STAGE_COLUMNS = ("stage", "params", "non-zero", "bytes on disk", "size vs distilled")


def stage_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the stage table (the CLI and the benchmark print it)."""
    from ..telemetry import fmt_bytes

    rows = report["stages"]
    lm = "perplexity" in rows[0]["eval"]
    quality = ["perplexity"] if lm else ["accuracy", "F1"]
    speed = "tokens/s (eval)"
    base = rows[0]["bytes_on_disk"]
    out = []
    for r in rows:
        e = r["eval"]
        q = [f"{e['perplexity']:.2f}"] if lm else [f"{e['accuracy']:.4f}", f"{e['f1']:.4f}"]
        nonzero = f"{r['nonzero_params']:,}" if r["nonzero_params"] is not None else "n/a"
        out.append([r["stage"], f"{r['params']:,}", nonzero, fmt_bytes(r["bytes_on_disk"]),
                    f"{r['bytes_on_disk'] / base:.3f}x", *q, f"{e.get('tokens_per_second', float('nan')):,.0f}"])
    return [*STAGE_COLUMNS, *quality, speed], out
