"""A whole run from one YAML file: load or fine-tune the teacher, build the student, read and
encode the data, distil, evaluate, save. ``metakd finetune-teacher`` and ``metakd distill`` are
thin wrappers around :func:`finetune_teacher` and :func:`distill`.

A run file holds the models, the data and the output directory at top level and the
``DistillConfig`` under ``distill:`` (see ``configs/``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from . import data as data_mod
from .atomic import atomic_directory
from .compress.config import CompressConfig
from .config import TASKS, ConfigError, DistillConfig, _yaml_number
from .messages import log as _log
from .models import ModelError

FINETUNE_KEYS = {"epochs": 1, "lr": 5e-5, "batch_size": 32, "n_train": None, "max_steps": None}


@dataclass
class RunConfig:
    """Where the models and data come from and where the results go."""

    teacher: str = "embedded"
    """"embedded" (the bundled pretrained MiniLM-L6, classification only), a hub id or a local
    directory, or "new:gpt2" / "new:llama" (causal LM trained from scratch by finetune-teacher,
    with a BPE tokenizer trained on the corpus; sizes in teacher_config)."""
    student: str = "first:2"
    """A hub id or local directory, or derived from the teacher: "layers:0,5" (those blocks),
    "alternate", "first:k", "last:k", or "random:key=value,..." (a re-sized random model of the
    teacher's architecture, e.g. random:num_hidden_layers=2,hidden_size=192,intermediate_size=768)."""
    task: str = "classification"
    """Sets distill.task: "classification" or "causal_lm"."""
    data: str | dict[str, str] = "embedded"
    """A data spec of metakd.data: a file, a directory, {train: PATH, eval: PATH}, a hub name
    ("glue/sst2"), or "embedded" (docs/data.md: "Describing your data")."""
    text_column: str | int | list | None = None
    """The text column of the data, by name or 0-based position; for sentence pairs two of them
    ("question,sentence" or a list). None: the first known pair or text column present (sentence1/
    sentence2, question/sentence, ..., sentence, text, review, content)."""
    label_column: str | int | None = None
    """The label column, by name or 0-based position. None: the first of label, labels, target,
    sentiment, gold_label, is_duplicate, Quality."""
    header: bool | None = None
    """Delimited files: whether the first row is a header (null: decided from strong evidence only, and
    reported; when the evidence is weak the run stops with one line that shows the first row)."""
    encoding: str | None = None
    """Local data files: their text encoding ("latin-1", "cp1252", "utf-16", ...); None: UTF-8 (a file that
    is not stops the run with one line: the byte offset, what it looks like, how to convert it)."""
    allow_eval_overlap: bool = False
    """Accept eval data more than half of whose texts are also training texts (its scores measure memory);
    the count and share of such texts are reported either way."""
    label_map: dict[str, str] = field(default_factory=dict)
    """Data label name -> label name of a trained teacher (or student) with other names for the same classes."""
    n_train: int | None = None
    """A seeded subset of the training split (None: all); the quiz split is carved from it."""
    n_eval: int | None = None
    """A seeded subset of the evaluation split (None: all)."""
    teacher_bits: int | None = None
    """4 or 8: load the teacher quantized (bitsandbytes); the meta-update must then be "lora"."""
    teacher_quant_type: str = "nf4"
    """With teacher_bits: 4, the 4-bit data type: "nf4" or "fp4"."""
    teacher_dtype: str | None = None
    """"fp32", "bf16" or "fp16": load the (unquantized) teacher's weights in this dtype (e.g.
    ``--set teacher_dtype=bf16`` halves an LLM teacher's memory); None: float32."""
    teacher_config: dict[str, Any] = field(default_factory=dict)
    """new:ARCH teachers: config fields (e.g. n_layer, n_embd, n_head) and tokenizer_vocab."""
    finetune: dict[str, Any] = field(default_factory=dict)
    """Teacher fine-tuning: epochs, lr, batch_size, n_train, max_steps."""
    generation_tokens: int = 32
    """causal_lm: new tokens per prompt when measuring generation speed."""
    output: str = "runs/metakd"
    """Output directory: the fine-tuned teacher (OUTPUT/teacher), the distilled models
    (OUTPUT/distilled), metrics.json, log.jsonl and checkpoints."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """The DistillConfig, under ``distill:`` (its keys are listed above)."""
    compress: CompressConfig = field(default_factory=CompressConfig)
    """``metakd compress``: pruning, recovery distillation and quantization of the distilled student."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(map(repr, TASKS))}; got {self.task!r}")
        if isinstance(self.data, dict):
            if self.task == "causal_lm":
                raise ConfigError("causal_lm data is one corpus (a file, directory or hub name), not {train, eval}")
            if set(self.data) != {"train", "eval"} or not all(isinstance(v, str) and v.strip()
                                                              for v in self.data.values()):
                raise ConfigError(f"data as a mapping names two files, {{train: PATH, eval: PATH}}; got {self.data!r}")
        if self.header is not None and not isinstance(self.header, bool):
            raise ConfigError(f"header must be true, false or null (decided from the file), got {self.header!r}")
        for name in ("teacher", "student", "output") + (() if isinstance(self.data, dict) else ("data",)):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        if self.distill.task != self.task:
            self.distill = self.distill.replace(task=self.task)
        for name in ("finetune", "teacher_config", "label_map"):
            if getattr(self, name) is None:  # an empty 'finetune:' line
                setattr(self, name, {})
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"'{name}' must be a mapping (key: value), got {getattr(self, name)!r}")
        for key in self.finetune:
            if key not in FINETUNE_KEYS:
                hint = difflib.get_close_matches(str(key), list(FINETUNE_KEYS), n=1)
                raise ConfigError(f"unknown finetune key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                                  + f" (known: {', '.join(FINETUNE_KEYS)})")
        self.label_map = {str(k): str(v) for k, v in self.label_map.items()}
        self.finetune = {k: _yaml_number(self.finetune.get(k, v)) for k, v in FINETUNE_KEYS.items()}
        for key in ("epochs", "batch_size", "n_train", "max_steps"):
            value = self.finetune[key]
            if isinstance(value, float) and value.is_integer():
                value = self.finetune[key] = int(value)
            optional = key in ("n_train", "max_steps")
            if not (value is None and optional) and not (
                    isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ConfigError(f"finetune.{key} must be a positive integer{' or null' if optional else ''}, "
                                  f"got {value!r}")
        lr = self.finetune["lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise ConfigError(f"finetune.lr must be a positive number, got {lr!r}")
        if isinstance(self.generation_tokens, bool) or not isinstance(self.generation_tokens, int) \
                or self.generation_tokens < 1:
            raise ConfigError(f"generation_tokens must be a positive integer, got {self.generation_tokens!r}")
        from .precision import parse_dtype

        parse_dtype(self.teacher_dtype)  # a clear error for a bad name, before anything loads
        if self.teacher_dtype is not None and self.teacher_bits:
            raise ConfigError("teacher_dtype and teacher_bits both set the teacher's weights; use one "
                              "(a quantized teacher computes in its own compute dtype)")
        if self.teacher_quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"teacher_quant_type must be 'nf4' or 'fp4', got {self.teacher_quant_type!r}")
        for name in ("n_train", "n_eval"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")
        if self.teacher_bits not in (None, 4, 8):
            raise ConfigError(f"teacher_bits must be 4, 8 or null, got {self.teacher_bits!r}")
        if self.teacher_bits and self.distill.meta_update == "full":
            raise ConfigError("meta_update='full' cannot train a quantized teacher's weights; use meta_update='lora' "
                              "or drop teacher_bits")
        if self.task == "causal_lm" and self.teacher == "embedded":
            raise ConfigError("the embedded teacher is a sentence encoder (classification); for task='causal_lm' name "
                              "a causal LM (a hub id, a directory, or new:gpt2)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                sections = {f.name: "distill" for f in dataclasses.fields(DistillConfig)}
                sections.update({f.name: "compress" for f in dataclasses.fields(CompressConfig)})
                hint = difflib.get_close_matches(key, known + list(sections), n=1)
                where = (f" ({sections[hint[0]]} settings go under '{sections[hint[0]]}:')"
                         if hint and hint[0] not in known else "")
                raise ConfigError(f"unknown run config key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                                  + where)
        values = dict(values)
        distill = values.pop("distill", None) or {}
        if not isinstance(distill, dict):
            raise ConfigError("'distill' must be a mapping of DistillConfig keys")
        distill.setdefault("task", values.get("task", "classification"))
        compress = CompressConfig.from_dict(values.pop("compress", None) or {})
        return cls(distill=DistillConfig.from_dict(distill), compress=compress, **values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "RunConfig":
        """Read a run file; ``overrides`` are ``key=value`` strings (``distill.meta_update=full``)."""
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"run config {path} is a directory; name a YAML run file (see configs/)")
        if not path.is_file():
            raise ConfigError(f"run config not found: {path}")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); a run file is "
                              "YAML text") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}{_yaml_problem(exc)}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of run config keys (key: value lines), found "
                              f"{'a list' if isinstance(values, list) else repr(values)}")
        return cls.from_dict(apply_overrides(values, overrides or []))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["distill"] = self.distill.to_dict()
        out["compress"] = self.compress.to_dict()
        return out

    @property
    def teacher_dir(self) -> Path:
        """Where ``finetune-teacher`` saves the task teacher and ``distill`` looks for it."""
        return Path(self.output) / "teacher"


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``key=value`` strings (dotted keys reach into mappings: ``distill.meta_update=full``;
    values are parsed as YAML) in the run-file mapping ``values``, in place; returns it."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. distill.meta_update=full)")
        target = values
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
        try:
            target[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value{_yaml_problem(exc, where=False)}; quote it "
                              f"(--set '{key}=\"...\"') if it is a string") from None
    return values


def _yaml_problem(exc: yaml.YAMLError, where: bool = True) -> str:
    """``, line L, column C: invalid YAML (problem)`` for a YAML parse error, on one line."""
    mark = getattr(exc, "problem_mark", None)
    at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None and where else ""
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{at}: invalid YAML ({problem}{f' {context}' if context else ''})"


# ---------------------------------------------------------------------------- models
def _base_teacher_source(run: RunConfig) -> str:
    """Where the configured teacher loads from (the embedded one's directory for "embedded"):
    the base that ``finetune-teacher`` fine-tunes, whatever ``output/teacher`` holds."""
    if run.teacher == "embedded":
        from .models import embedded_teacher_path

        return str(embedded_teacher_path())
    return run.teacher


def teacher_source(run: RunConfig) -> str:
    """Where the run's teacher loads from: the fine-tuned one in ``output/teacher`` when it exists,
    else the configured one."""
    return str(run.teacher_dir) if (run.teacher_dir / "config.json").is_file() else _base_teacher_source(run)


NEW_ARCHS = ("gpt2", "llama")  # the architectures metakd.scratch.new_causal_lm builds


def _derived_student(spec: str) -> bool:
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
            raise ConfigError(f"student {spec!r}: the value of {key!r}{_yaml_problem(exc, where=False)}") from None
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
    if not _derived_student(spec):
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


def align_label_names(run: RunConfig, source: str, splits: dict[str, Any], role: str = "teacher") -> dict[str, Any]:
    """``splits`` with label ids in the order of the ``id2label`` that a trained classifier
    ``source`` carries (``metakd.label_names.align_labels``; ``label_map`` maps other names);
    unchanged for models without a trained head or without saved names. A mismatch of names is
    a DataError before anything loads."""
    from .label_names import align_labels, saved_label_names
    from .models import model_config

    if run.task != "classification" or source.startswith("new:") or "label_names" not in splits:
        return splits
    config = model_config(source, role)
    if not any(str(a).endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or ()):
        return splits
    names = saved_label_names(config)
    if names is None:
        if run.label_map:
            raise ConfigError(f"label_map is set, but the {role} {source!r} has no label names to map to (only "
                              "LABEL_0, LABEL_1, ...)")
        return splits
    aligned, changed = align_labels(splits, names, source, role, run.label_map)
    if changed:
        _log(f"data labels numbered as the {role} {source!r} numbers them: "
             + ", ".join(f"{i}={n}" for i, n in enumerate(aligned["label_names"][:10])))
    return aligned


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


# ---------------------------------------------------------------------------- data
def load_data(run: RunConfig, seed: int | None = None, report: bool = True) -> dict[str, Any]:
    """Raw splits: {"train", "eval"} lists (and "label_names" for classification). ``report``:
    say what was read (rows, the header decision, overlaps); False when this run has said it
    already (a second read of the same files)."""
    seed = run.distill.seed if seed is None else seed
    if run.task == "causal_lm":
        return data_mod.load_lm_corpus(run.data, seed=seed)
    return data_mod.load_task(run.data, run.n_train, run.n_eval, seed, text_column=run.text_column,
                              label_column=run.label_column, header=run.header,
                              report=_log if report else _quiet, encoding=run.encoding,
                              allow_eval_overlap=run.allow_eval_overlap)


def _quiet(message: str) -> None:
    """A ``report`` that says nothing (``None`` would turn some reports into Python warnings)."""


def encode_splits(run: RunConfig, splits: dict[str, Any], tokenizer, student_tokenizer=None) -> dict[str, Any]:
    """Tokenized train and eval sets; LM corpora are cut into blocks of ``distill.max_length``."""
    length = run.distill.max_length
    if run.task == "causal_lm":
        out = {k: data_mod.encode_lm(splits[k], tokenizer, length) for k in ("train", "eval")}
        if run.n_train is not None:
            out["train"] = _subset(out["train"], run.n_train, run.distill.seed)
        if run.n_eval is not None:
            out["eval"] = _subset(out["eval"], run.n_eval, run.distill.seed + 1)
        return out
    return {k: data_mod.encode(splits[k], tokenizer, length, student_tokenizer=student_tokenizer)
            for k in ("train", "eval")}


def _subset(items, n: int, seed: int):
    if n >= len(items):
        return items
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    return [items[i] for i in sorted(order[:n])]


def label_count(run: RunConfig, splits: dict[str, Any]) -> int | None:
    """How many classes the run's data has (None for causal_lm); a DataError for a single class."""
    if run.task == "causal_lm":
        return None
    names = splits.get("label_names")
    n = len(names) if names else max(y for _, y in splits["train"]) + 1
    if n < 2:
        raise data_mod.DataError(f"the data {run.data!r} has a single class ({', '.join(map(str, names or [0]))}); "
                                 "classification needs at least two labels")
    return n


# ---------------------------------------------------------------------------- the two commands
def finetune_teacher(run: RunConfig, progress: bool = True, *, why: str | None = None,
                     data_reported: bool = False) -> dict[str, Any]:
    """Fine-tune (or, for ``new:ARCH``, train from scratch) the teacher on the task's training
    split and save it with ``save_pretrained`` (safetensors) plus its tokenizer in
    ``output/teacher``, where ``distill`` picks it up. Returns the teacher's eval scores.

    The result is recorded with its origin (``metakd.teacher_cache``) and cached under
    ``$METAKD_CACHE/finetuned``: a later run with the same base teacher, data, label names, seed
    and fine-tuning settings copies it instead of fine-tuning again, whatever its output
    directory. Fine-tuning checkpoints to ``output/teacher_checkpoint`` (every
    ``distill.checkpoint_every`` steps and on SIGTERM/SIGINT, then ``TrainingInterrupted``), and
    a rerun continues from there.

    ``why``: why the caller (``distill``) fine-tunes, said together with what happens (the
    fine-tuning, or the reuse of a cached teacher). ``data_reported``: the caller has read the data
    and said so; it is read again quietly."""
    import shutil

    from .finetune import REPORT_SECONDS, cache_key, finetune_classifier, step_plan
    from .label_names import set_label_names
    from .teacher_cache import RECORD, cached_teacher, copy_teacher, store_teacher, teacher_origin
    from .telemetry import measure

    ft = run.finetune
    if ft["n_train"] is not None:  # the teacher may see more (or fewer) training examples than the student
        run = dataclasses.replace(run, n_train=int(ft["n_train"]))
    if run.teacher_bits:
        raise ConfigError("fine-tune the teacher unquantized (drop teacher_bits for finetune-teacher); "
                          "distill then loads the saved teacher quantized")
    check_run(run, teacher=_base_teacher_source(run), student=False)
    splits = align_label_names(run, _base_teacher_source(run), load_data(run, report=not data_reported))
    num_labels = label_count(run, splits)
    origin = teacher_origin(run, _base_teacher_source(run), splits.get("label_names"))
    cached = cached_teacher(origin)
    if cached is not None:
        copy_teacher(cached, run.teacher_dir)
        _log((f"{why}; " if why else "") + f"reusing the fine-tuned teacher cached in {cached} (same base teacher, "
             f"data, label names, seed and fine-tuning settings); copied to {run.teacher_dir}")
        report = json.loads((cached / RECORD).read_text())
        return {**report, "saved": str(run.teacher_dir), "cached": str(cached)}
    if why:
        _log(f"{why}: fine-tuning it first (as `metakd finetune-teacher` does; saved to {run.teacher_dir} and "
             "reused)")
    if run.teacher.startswith("new:"):
        from .scratch import new_causal_lm, train_bpe_tokenizer

        sizes = dict(run.teacher_config)
        vocab = int(sizes.pop("tokenizer_vocab", 4096))
        _log(f"training a {vocab}-entry BPE tokenizer on {len(splits['train'])} documents")
        tokenizer = train_bpe_tokenizer(splits["train"], vocab)
        model = new_causal_lm(run.teacher.partition(":")[2], tokenizer, seed=run.distill.seed, **sizes)
    else:
        model, tokenizer = load_teacher(run, num_labels, source=_base_teacher_source(run))
    encoded = encode_splits(run, splits, tokenizer)
    train = encoded["train"]
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    _, plan = step_plan(len(train), int(ft["batch_size"]), int(ft["epochs"]), ft["max_steps"])
    what = "blocks" if run.task == "causal_lm" else "examples"
    _log(f"fine-tuning the teacher on {len(train)} {what}, lr {ft['lr']}: "
         f"{plan.replace('max_steps', 'finetune.max_steps').replace('raise epochs', 'raise finetune.epochs')}")
    checkpoints = Path(run.output) / "teacher_checkpoint"
    with measure() as m:
        finetune_classifier(model, train, epochs=int(ft["epochs"]), lr=float(ft["lr"]), batch_size=int(ft["batch_size"]),
                            seed=run.distill.seed, pad_id=pad, progress=progress, task=run.task,
                            max_steps=ft["max_steps"], checkpoint_dir=checkpoints,
                            checkpoint_every=run.distill.checkpoint_every, settings={"origin": cache_key(**origin)},
                            log=_log, log_dir=run.output, report_every=None if progress else REPORT_SECONDS)
    scores = evaluate_model_on(run, model, encoded["eval"], pad)
    target = run.teacher_dir
    report = {"teacher": run.teacher, "saved": str(target), "eval": scores, "train": m.to_dict(),
              "n_train": len(train), "origin": origin}
    warning = _collapse_warning(run, scores, encoded["eval"])
    if warning:
        report["warning"] = warning
    if "label_names" in splits:
        set_label_names(model, splits["label_names"])
    with atomic_directory(target) as tmp:  # a kill mid-save never leaves a half-written teacher to pick up
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / RECORD).write_text(json.dumps(report, indent=2, default=str))
    shutil.rmtree(checkpoints, ignore_errors=True)
    _log(f"fine-tuned teacher saved to {target} and cached in {store_teacher(target, origin)}")
    return report


def _stale_teacher_dir(run: RunConfig, splits: dict[str, Any]) -> str | None:
    """Why ``output/teacher`` must be fine-tuned again (None: it need not): it was fine-tuned from
    another base teacher, data, label names, seed or fine-tuning settings than this run's. Says
    when it uses the one there."""
    from .teacher_cache import origin_difference, recorded_origin, teacher_origin

    target = run.teacher_dir
    if not (target / "config.json").is_file() or Path(_base_teacher_source(run)).resolve() == target.resolve():
        return None
    recorded = recorded_origin(target)
    if recorded is None:  # saved by hand or by an older metakd: nothing to compare, used as it is
        return None
    base = _base_teacher_source(run)
    current = teacher_origin(run, base, align_label_names(run, base, splits).get("label_names"))
    differ = origin_difference(recorded, current)
    if not differ:
        _log(f"using the fine-tuned teacher in {target} (same base teacher, data, labels, seed and settings)")
        return None
    return f"the teacher in {target} was fine-tuned with other {', '.join(differ)} than this run"


def _train_time(m, d) -> dict[str, Any]:
    """The training measurement; after a resume ``seconds`` is the sum over the segments (to the
    checkpoint each resumed from, plus this one), ``segment_seconds`` this process's part; CPU
    time, energy and memory are this segment's."""
    out = m.to_dict()
    before = float(getattr(d, "metakd_seconds_before", 0.0) or 0.0)
    if before:
        out["segment_seconds"] = out["seconds"]
        out["seconds"] = out["seconds"] + before
    return out


def _distill_plan(cfg: DistillConfig, train, eval_data=None) -> str:
    """Which limit ends the distillation (``distill.epochs`` or ``distill.max_steps``), in words,
    counting the rows ``fit`` trains on: what the quiz and validation splits leave."""
    from .finetune import step_plan

    student_part, quiz = data_mod.split_quiz(train, cfg.quiz_fraction, cfg.seed)
    held = f"the {cfg.quiz_fraction:g} quiz split"
    if cfg.validation_fraction > 0:  # carved as fit carves it
        student_part, _ = data_mod.split_validation(student_part, cfg.validation_fraction, cfg.seed,
                                                    [d for d in (quiz, eval_data) if d is not None])
        held = f"the {cfg.quiz_fraction:g} quiz and {cfg.validation_fraction:g} validation splits"
    _, plan = step_plan(len(student_part), cfg.batch_size, cfg.epochs, cfg.max_steps)
    plan = plan.replace("max_steps", "distill.max_steps").replace("raise epochs", "raise distill.epochs")
    return plan.replace(" batch(es)", f" batch(es) (after {held})", 1)


def _collapse_warning(run: RunConfig, scores: dict[str, float], eval_data, role: str = "teacher") -> str | None:
    """Log (and return) a warning when a classifier learned little beyond the class prior
    (``metakd.evaluate.collapse_warning``: the majority-class rate, and an MCC floor)."""
    from .evaluate import collapse_warning

    if run.task != "classification":
        return None
    warning = collapse_warning(scores, data_mod.labels_of(eval_data), role)
    if warning:
        _log(f"warning: {warning}")
    return warning


def evaluate_model_on(run: RunConfig, model, data, pad: int | dict[str, int], side: str = "teacher") -> dict[str, float]:
    """Scores of ``model`` on encoded ``data`` as the run's task measures them
    (``metakd.evaluate.evaluate_model`` with the run's task, batch size and chunking)."""
    from .evaluate import evaluate_model

    return evaluate_model(model, data, task=run.task, batch_size=run.distill.eval_batch_size, pad=pad, side=side,
                          lm_chunk_size=run.distill.lm_chunk_size)


def distill(run: RunConfig, progress: bool = True, resume: bool = False, *, resume_if_present: bool = False,
            overwrite: bool = False) -> dict[str, Any]:
    """Distil as configured: returns (and writes to ``output/metrics.json``) the student's and the
    teacher's scores, time, memory and energy; the result is saved in ``output/distilled``.
    Checkpoints go to ``output/checkpoint`` (every ``distill.checkpoint_every`` steps, at the end
    and on SIGTERM/SIGINT); ``resume`` continues from the one there and is refused when there is
    none, unless ``resume_if_present`` (which resumes only when there is one). A fresh run into an
    output directory that holds a previous run (``metrics.json``, ``distilled/``, checkpoints) is
    refused unless ``overwrite``.

    Launched on several processes (``accelerate launch``/``torchrun``) the training is
    data-parallel (``metakd.distributed``); every process trains and evaluates, only the main one
    shows progress and writes files, and the others wait for it."""
    from .checkpoint import start_clock
    from .distiller import MetaDistiller
    from .distributed import Dist
    from .evaluate import generation_speed
    from .label_names import set_label_names
    from .telemetry import EnergyMeter, measure

    dist = Dist.from_env()  # before any model loads: it picks this process's GPU
    progress = progress and dist.is_main
    cfg = run.distill.replace(progress=progress and run.distill.progress)
    check_run(run)
    from .step_log import check_report_to

    check_report_to(cfg.report_to)  # a missing tensorboard fails before anything loads
    from .outputs import resume_decision

    resume = resume_decision(run.output, resume, resume_if_present, overwrite)
    dist.barrier()  # every process decided before the main one writes anything there
    if run.teacher.startswith("new:") and not (run.teacher_dir / "config.json").is_file():
        raise ConfigError(f"teacher {run.teacher!r} is trained from scratch: run `metakd finetune-teacher` first "
                          f"(it saves to {run.teacher_dir})")
    splits = load_data(run)
    num_labels = label_count(run, splits)
    stale = _stale_teacher_dir(run, splits)
    if stale:
        if dist.is_main:
            finetune_teacher(run, progress=progress, why=stale, data_reported=True)
        dist.barrier()
    if run.task == "classification":  # the quiz split, checked before any model loads (LM blocks: after encoding)
        data_mod.split_quiz(splits["train"], cfg.quiz_fraction, cfg.seed)
    if not _derived_student(run.student):
        check_num_labels(run, run.student, num_labels, "student")
    splits = align_label_names(run, teacher_source(run), splits)
    if not _derived_student(run.student):
        student_aligned = align_label_names(run, run.student, splits, "student")
        if student_aligned["label_names"] != splits["label_names"]:
            raise data_mod.DataError(f"the student {run.student!r} numbers the labels {student_aligned['label_names']} "
                                     f"but the teacher {splits['label_names']}; use models that agree")
    teacher, tokenizer = load_teacher(run, num_labels)
    if getattr(teacher, "metakd_new_head", False):
        if dist.is_main:  # one process fine-tunes and saves; the others load what it saved
            finetune_teacher(run, progress=progress, why="the teacher's classification head is untrained",
                             data_reported=True)
        dist.barrier()
        teacher, tokenizer = load_teacher(run, num_labels)
    student, student_tokenizer = build_student(run, teacher, tokenizer, num_labels)
    encoded = encode_splits(run, splits, tokenizer, student_tokenizer)
    _log(f"{len(encoded['train'])} training and {len(encoded['eval'])} evaluation "
         f"{'blocks' if run.task == 'causal_lm' else 'examples'}; meta_update={cfg.meta_update}; "
         + _distill_plan(cfg, encoded["train"], encoded["eval"]))
    d = MetaDistiller(teacher, student, cfg, dist=dist, keep_teacher_adapters=True)  # a run file names its teacher
    teacher_before = d.evaluate(encoded["eval"], model="teacher")
    teacher_warning = _collapse_warning(run, teacher_before, encoded["eval"])
    start_clock(d)  # checkpoints record the training seconds, so a resumed run reports the sum
    with measure(energy=EnergyMeter()) as m:
        history = d.fit(encoded["train"], eval_data=encoded["eval"], checkpoint_dir=Path(run.output) / "checkpoint",
                        resume=resume, log_dir=run.output)
    result: dict[str, Any] = {
        "run": run.to_dict(), "student": history["eval"][-1], "teacher_before": teacher_before,
        # plain KD leaves the teacher as it was: no second evaluation
        "teacher_after": (teacher_before if cfg.meta_update == "none" else d.evaluate(encoded["eval"], model="teacher")),
        "train": _train_time(m, d),
        "steps": len(history["train"]), "trainable_teacher_params": d.trainable_teacher_parameters(),
        # validation_fraction > 0: the best-validation point (its step, validation and eval scores) beside the last
        "best_validation": history.get("best"),
        "student_params": sum(p.numel() for p in d.student.parameters()),
        "trainable_student_params": sum(p.numel() for p in d.student_params),
    }
    if history.get("teacher_guard"):
        result["teacher_guard"] = history["teacher_guard"]
    if cfg.meta_update != "none" and run.task == "classification":
        before, after = result["teacher_before"]["accuracy"], result["teacher_after"]["accuracy"]
        if after < before:  # never hand back a worse teacher without saying so
            _log(f"the meta-updated teacher ends at {100 * after:.2f}% on the evaluation data, "
                 f"{100 * (before - after):.2f} points below the {100 * before:.2f}% it started at")
    if run.task == "causal_lm":
        prompts = torch.stack([encoded["eval"][i]["input_ids"][:8] for i in range(min(4, len(encoded["eval"])))])
        result["student_generation"] = generation_speed(d.student, prompts, run.generation_tokens)
        result["teacher_generation"] = generation_speed(d.teacher, prompts, run.generation_tokens)
    if "label_names" in splits:
        result["label_names"] = splits["label_names"]
    if teacher_warning:
        result["teacher_warning"] = teacher_warning
    result["saved"] = str(Path(run.output) / "distilled")
    if "label_names" in splits:  # config.json of every saved model names its labels
        set_label_names(d.student, splits["label_names"])
        set_label_names(d.teacher, splits["label_names"])
    if dist.is_main:  # every process holds the same models: one writes them
        d.save(result["saved"], tokenizer=tokenizer, student_tokenizer=student_tokenizer)
        (Path(run.output) / "metrics.json").write_text(json.dumps({**result, "history": history}, indent=2,
                                                                  default=str))
    dist.barrier()
    return result


__all__ = ["RunConfig", "align_label_names", "apply_overrides", "build_student", "check_num_labels", "check_run", "distill", "encode_splits", "evaluate_model_on", "finetune_teacher",
           "label_count", "load_data", "load_teacher", "teacher_source"]
