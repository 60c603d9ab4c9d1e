"""The models of a run: where its teacher loads from, the student spec, the checks made before anything
loads (``check_run``, ``check_num_labels``), loading the teacher and building the student."""

from __future__ import annotations

from typing import Any

import torch
import yaml

from . import data as data_mod
from .config import ConfigError
from .models import ModelError
from .run_config import RunConfig, yaml_problem


def base_teacher_source(run: RunConfig) -> str:
    """Where the configured teacher loads from (the embedded one's directory for "embedded"):
    the base that ``finetune-teacher`` fine-tunes, whatever ``output/teacher`` holds."""
    if run.teacher == "embedded":
        from .models import embedded_teacher_path

        return str(embedded_teacher_path())
    return run.teacher


def teacher_source(run: RunConfig) -> str:
    """Where the run's teacher loads from: the fine-tuned one in ``output/teacher`` when it exists,
    else the configured one."""
    return str(run.teacher_dir) if (run.teacher_dir / "config.json").is_file() else base_teacher_source(run)


NEW_ARCHS = ("gpt2", "llama")  # the architectures metakd.scratch.new_causal_lm builds


def derived_student(spec: str) -> bool:
    """Whether the ``student`` spec derives the student from the teacher (else it names a model)."""
    return spec == "alternate" or spec.partition(":")[0] in ("layers", "first", "last", "random")


def _student_layers(spec: str) -> list[int]:
    try:
        return [int(x) for x in spec.partition(":")[2].split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"student {spec!r}: layers:I,J,... takes block indices") from None


def _student_changes(spec: str) -> dict[str, Any]:
    changes = {}
    for item in filter(None, (x.strip() for x in spec.partition(":")[2].split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"student {spec!r}: random: takes key=value pairs")
        try:
            changes[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"student {spec!r}: the value of {key!r}{yaml_problem(exc, where=False)}") from None
    return changes


def check_run(run: RunConfig, teacher: str | None = None, student: bool = True) -> None:
    """The checks that need neither the data nor any weights, run before anything is loaded or
    trained so that a bad run fails in seconds with one clear error: the teacher (``teacher``,
    default ``teacher_source(run)``) and, with ``student``, a named student exist (a saved model
    directory, or a hub id in the local hub cache or on a reachable hub); a student derived from
    the teacher fits its blocks and config; for causal_lm a named student's tokenizer shares the
    teacher's vocabulary."""
    from .models import check_model_source, load_tokenizer, model_config, select_layers

    source = teacher or teacher_source(run)
    config = None
    if source.startswith("new:"):
        arch = source.partition(":")[2]
        if arch not in NEW_ARCHS:
            raise ConfigError(f"teacher {source!r}: new:ARCH trains a causal LM from scratch; ARCH is one of "
                              f"{', '.join(NEW_ARCHS)}")
        if run.task != "causal_lm":
            raise ConfigError("new:ARCH teachers are causal LMs; set task: causal_lm")
        from transformers import GPT2Config, LlamaConfig

        blank = (GPT2Config if arch == "gpt2" else LlamaConfig)()
        unknown = sorted(k for k in run.teacher_config if k != "tokenizer_vocab" and not hasattr(blank, k))
        if unknown:
            raise ConfigError(f"teacher_config: {type(blank).__name__} has no field(s) {unknown}")
    else:
        check_model_source(source, "teacher")
        config = model_config(source, "teacher")
    _check_max_length(run, config, "teacher")
    if not student:
        return
    spec = run.student
    if not derived_student(spec):
        check_model_source(spec, "student")
        _check_max_length(run, model_config(spec, "student"), "student")
        if run.task == "causal_lm" and config is not None:
            from .vocab import check_tokenizers

            check_tokenizers(load_tokenizer(source, "teacher"), load_tokenizer(spec, "student"),
                             truncate=run.distill.truncate_vocab)
        return
    if run.teacher_bits and not spec.startswith("random:"):
        raise ConfigError(f"student {spec!r} copies blocks of the teacher, which teacher_bits loads quantized; "
                          "name a student model (hub id or directory), use random:..., or drop teacher_bits")
    blocks = getattr(config, "num_hidden_layers", None) if config is not None else None
    kind = spec.partition(":")[0]
    if kind == "layers":
        layers = _student_layers(spec)
        if blocks and (not layers or any(not 0 <= i < blocks for i in layers)):
            raise ModelError(f"student {spec!r}: block indices must lie in 0..{blocks - 1} (the teacher has "
                             f"{blocks} blocks)")
    elif kind == "random":
        changes = _student_changes(spec)
        unknown = [k for k in changes if config is not None and not hasattr(config, k)]
        if unknown:
            raise ModelError(f"student {spec!r}: {type(config).__name__} has no field(s) {unknown}")
    elif blocks:
        select_layers(blocks, spec)


def _check_max_length(run: RunConfig, config: Any, role: str) -> None:
    """distill.max_length must fit a learned position table (BERT, GPT-2; rotary models have none)."""
    limit = getattr(config, "max_position_embeddings", None) if config is not None else None
    rotary = any(getattr(config, k, None) is not None for k in ("rope_theta", "rope_parameters", "rope_scaling"))
    if isinstance(limit, int) and not rotary and run.distill.max_length > limit:
        raise ConfigError(f"distill.max_length {run.distill.max_length} exceeds the {role}'s {limit} positions "
                          f"(max_position_embeddings); set distill.max_length <= {limit}")


def check_num_labels(run: RunConfig, source: str, num_labels: int | None, role: str = "teacher") -> None:
    """A classifier whose trained head has another number of labels than the data cannot serve
    this data: say so before loading it (``transformers`` would fail on the head's shape)."""
    from .models import model_config

    if run.task != "classification" or num_labels is None or source.startswith("new:"):
        return
    config = model_config(source, role)
    if not any(str(a).endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or ()):
        return  # no trained head: a fresh one is made for the data's labels
    trained = config.num_labels
    if trained == num_labels:
        return
    if source == str(run.teacher_dir):
        raise data_mod.DataError(f"the fine-tuned teacher in {run.teacher_dir} has {trained} labels but the data "
                                 f"{run.data!r} has {num_labels}; fine-tune it again on this data "
                                 "(metakd finetune-teacher) or point 'output' elsewhere")
    raise data_mod.DataError(f"the {role} {source!r} is a classifier trained for {trained} labels, but the data "
                             f"{run.data!r} has {num_labels} (labels 0..{num_labels - 1}); use a {role} trained on "
                             "this label set, or its base model (a new head is then trained)")


def load_teacher(run: RunConfig, num_labels: int | None, source: str | None = None):
    """(teacher, tokenizer): the fine-tuned teacher in ``output/teacher`` when it exists, else the
    configured one; quantized when ``teacher_bits`` is set."""
    from .models import load_causal_lm, load_classifier, load_tokenizer

    source = source or teacher_source(run)
    if source.startswith("new:"):
        raise ConfigError(f"teacher {run.teacher!r} is trained from scratch: run `metakd finetune-teacher` first")
    check_num_labels(run, source, num_labels, "teacher")
    if run.teacher_bits:
        from .quantization import load_quantized

        model = load_quantized(source, run.teacher_bits, run.teacher_quant_type, kind=run.task, num_labels=num_labels,
                               seed=run.distill.seed)
        tokenizer = load_tokenizer(source, "teacher")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer
    from .precision import parse_dtype

    dtype = parse_dtype(run.teacher_dtype) or torch.float32
    if run.task == "causal_lm":
        return load_causal_lm(source, dtype=dtype)
    return load_classifier(source, num_labels, dtype=dtype, seed=run.distill.seed)


def build_student(run: RunConfig, teacher, teacher_tokenizer, num_labels: int | None):
    """(student, tokenizer or None when it shares the teacher's) from the ``student`` spec."""
    from .models import load_causal_lm, load_classifier, random_student, student_from_teacher

    spec = run.student
    kind = spec.partition(":")[0]
    # a student cut from a bf16/fp16 teacher (teacher_dtype) trains in float32: fp32 master weights
    fp32 = (lambda m: m.to(torch.float32)) if run.teacher_dtype not in (None, "fp32") else (lambda m: m)
    if kind == "layers":
        return fp32(student_from_teacher(teacher, _student_layers(spec))), None
    if spec == "alternate" or kind in ("first", "last"):
        return fp32(student_from_teacher(teacher, spec)), None
    if kind == "random":
        return fp32(random_student(teacher, seed=run.distill.seed, **_student_changes(spec))), None
    model, tokenizer = (load_causal_lm(spec) if run.task == "causal_lm"
                        else load_classifier(spec, num_labels, seed=run.distill.seed))
    if run.task == "causal_lm":
        from .vocab import check_tokenizers

        check_tokenizers(teacher_tokenizer, tokenizer, truncate=run.distill.truncate_vocab)
        return model, None  # one shared tokenization
    return model, tokenizer
