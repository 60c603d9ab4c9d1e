"""The run file: ``RunConfig`` (where the models and data come from, where the results go, and the
``distill:`` and ``compress:`` sections), read from YAML with ``--set key=value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .compress.config import CompressConfig
from .config import TASKS, ConfigError, DistillConfig
from .config_checks import yaml_number

FINETUNE_KEYS = {"epochs": 1, "lr": 5e-5, "batch_size": 32, "n_train": None, "max_steps": None, "disjoint": False}


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
    data_seed: int | None = None
    """The seed of the n_train / n_eval subsets (None: distill.seed). A study that compares seeds on one
    fixed pool of examples sets it, so only the model's seed (initialisation, batches, quiz and
    validation splits) changes between seeds."""
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
    """Teacher fine-tuning: epochs, lr, batch_size, n_train, max_steps, and disjoint (true: the teacher
    trains only on training examples whose texts are not in the distillation's n_train subset, so
    its training data shares nothing with the student's train, quiz and validation splits; needs
    n_train)."""
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
        self.finetune = {k: yaml_number(self.finetune.get(k, v)) for k, v in FINETUNE_KEYS.items()}
        for key in ("epochs", "batch_size", "n_train", "max_steps"):
            value = self.finetune[key]
            if isinstance(value, float) and value.is_integer():
                value = self.finetune[key] = int(value)
            optional = key in ("n_train", "max_steps")
            if not (value is None and optional) and not (
                    isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ConfigError(f"finetune.{key} must be a positive integer{' or null' if optional else ''}, "
                                  f"got {value!r}")
        if not isinstance(self.finetune["disjoint"], bool):
            raise ConfigError(f"finetune.disjoint must be true or false, got {self.finetune['disjoint']!r}")
        if self.finetune["disjoint"] and (self.n_train is None or self.task != "classification"):
            raise ConfigError("finetune.disjoint keeps the teacher off the distillation's n_train subset: it needs "
                              "n_train (the subset) and task classification"
                              + (f"; n_train is null" if self.n_train is None else f"; task is {self.task!r}"))
        if self.data_seed is not None and (isinstance(self.data_seed, bool) or not isinstance(self.data_seed, int)
                                           or self.data_seed < 0):
            raise ConfigError(f"data_seed must be a non-negative integer or null (distill.seed), got {self.data_seed!r}")
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
            raise ConfigError(f"{path}{yaml_problem(exc)}") from None
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
            raise ConfigError(f"override {item!r}: the value{yaml_problem(exc, where=False)}; quote it "
                              f"(--set '{key}=\"...\"') if it is a string") from None
    return values


def yaml_problem(exc: yaml.YAMLError, where: bool = True) -> str:
    """``, line L, column C: invalid YAML (problem)`` for a YAML parse error, on one line."""
    mark = getattr(exc, "problem_mark", None)
    at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None and where else ""
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{at}: invalid YAML ({problem}{f' {context}' if context else ''})"
