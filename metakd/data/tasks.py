"""Classification tasks: ``load_task`` from the embedded default, a local file or directory, or a
hub set (``HUB_TASKS`` or ``hub:NAME[:CONFIG]``)."""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch

from .batching import _text_key
from .columns import ColumnSpec, _examples, _resolve_columns
from .errors import DataError, _show, _show_list
from .files import CLASSIFICATION_SUFFIXES, _read_labelled
from .hub import EVAL_SPLITS, _hub_load, _parse_hub_spec
from .labels import Example, Text, _check_label_kinds, _map_labels


EVAL_FILES = ("dev", "validation", "valid", "test", "dev_matched", "validation_matched")
"""File names (without suffix) of a data directory's eval file, in the order tried."""

EVAL_OVERLAP_LIMIT = 0.5
"""The largest share of eval texts that may also be training texts without ``allow_eval_overlap``."""


class HubTask(NamedTuple):
    """A classification set on the Hugging Face hub and where its fields are."""

    path: str
    config: str | None
    text_columns: tuple[str, ...]  # one column, or two for a pair
    label_column: str
    train_split: str
    eval_split: str


HUB_TASKS: dict[str, HubTask] = {
    "glue/sst2": HubTask("nyu-mll/glue", "sst2", ("sentence",), "label", "train", "validation"),
    "glue/cola": HubTask("nyu-mll/glue", "cola", ("sentence",), "label", "train", "validation"),
    "glue/mrpc": HubTask("nyu-mll/glue", "mrpc", ("sentence1", "sentence2"), "label", "train", "validation"),
    "glue/qnli": HubTask("nyu-mll/glue", "qnli", ("question", "sentence"), "label", "train", "validation"),
    "glue/rte": HubTask("nyu-mll/glue", "rte", ("sentence1", "sentence2"), "label", "train", "validation"),
    "glue/wnli": HubTask("nyu-mll/glue", "wnli", ("sentence1", "sentence2"), "label", "train", "validation"),
    "glue/qqp": HubTask("nyu-mll/glue", "qqp", ("question1", "question2"), "label", "train", "validation"),
    "glue/mnli": HubTask("nyu-mll/glue", "mnli", ("premise", "hypothesis"), "label", "train",
                         "validation_matched"),
    "imdb": HubTask("stanfordnlp/imdb", None, ("text",), "label", "train", "test"),
}


def load_task(spec: str | Mapping[str, str], n_train: int | None = None, n_eval: int | None = None,
              seed: int = 0, *, text_column: ColumnSpec = None, label_column: str | int | None = None,
              header: bool | None = None, eval_split: str | None = None,
              report: Callable[[str], None] | None = None, encoding: str | None = None,
              allow_eval_overlap: bool = False) -> dict[str, Any]:
    """Train and eval examples of a classification task, and its label names.

    Returns ``{"train": [...], "eval": [...], "label_names": [...]}``; examples are
    ``(text, label)`` or ``((text_a, text_b), label)`` with integer labels, and
    ``label_names[i]`` names label ``i``.

    ``spec``:

    * ``"embedded"``: the generated sentiment task (``metakd.synthetic``): ``seed`` draws the training
      sentences; the evaluation sentences are a fixed held-out set that no training draw contains.
      ``"embedded:easy"`` or ``"embedded:SHARE"`` (e.g. ``0.3``): a mix with that share of
      compositional sentences, the rest direct (``metakd.synthetic.compositional_share``).
    * a directory with a ``train.*`` file and an eval file, the first of ``EVAL_FILES``
      (``dev``, ``validation``, ``valid``, ``test``, ``dev_matched``, ``validation_matched``)
      (``.tsv``, ``.csv``, ``.jsonl``, ``.json`` or ``.txt``; e.g. ``../shared/data/sst2``).
    * ``{"train": PATH, "eval": PATH}``: the two files named.
    * a single file: split 90/10 by seed.
    * a name in ``HUB_TASKS`` (``"glue/sst2"``, ``"glue/mrpc"``, ``"glue/qnli"``, ``"glue/rte"``,
      ``"glue/qqp"``, ``"glue/mnli"`` (eval: validation_matched), ``"imdb"`` (eval: test), ...), or
      ``"hub:NAME[:CONFIG]"`` for any hub set: its ``train`` split and ``eval_split`` (default:
      the first of validation, validation_matched, dev, valid, test). Needs network (or the hub
      cache).

    Files are read by ``read_labelled_file`` (``text_column``, ``label_column``, ``header`` and
    ``encoding`` go to it; the column options pick the columns of hub sets too); a training file
    whose label column holds about one class per row is refused as likely swapped columns.
    Labels: integer labels keep their values (names ``"0"``, ``"1"``, ...; hub sets give their
    class names); label names are mapped to ids in the sorted order of the train labels (of the
    whole file for a single file), and an eval label that train lacks is an error. ``n_train``/``n_eval`` take a seeded random subset that
    keeps the file order; the label mapping does not depend on them. ``report`` gets one line per
    file read (rows read, header decision).

    Eval texts that are also training texts (the same text, or pair, as the quiz split compares
    them) are counted: a line to ``report`` (a warning without it) gives the count and share, and
    above ``EVAL_OVERLAP_LIMIT`` (half) the eval data is refused unless ``allow_eval_overlap``.
    """
    if not isinstance(allow_eval_overlap, bool):
        raise DataError(f"allow_eval_overlap must be true or false, got {allow_eval_overlap!r}")
    task = _load(spec, n_train, n_eval, seed, text_column, label_column, header, eval_split, report, encoding)
    _check_overlap(task, spec, allow_eval_overlap, report)
    return task


def _load(spec: str | Mapping[str, str], n_train: int | None, n_eval: int | None, seed: int,
          text_column: ColumnSpec, label_column: str | int | None, header: bool | None, eval_split: str | None,
          report: Callable[[str], None] | None, encoding: str | None) -> dict[str, Any]:
    class_names = None
    options = dict(text_column=text_column, label_column=label_column, header=header, report=report,
                   encoding=encoding)

    def read(path: Path, role: str) -> list[tuple[Text, int | str]]:
        return _read_labelled(path, **options, check_classes=role == "train")[0]

    if isinstance(spec, Mapping):
        paths = _named_files(spec)
        raw = {role: read(p, role) for role, p in paths.items()}
        mapped, names = _map_labels(raw, f"{paths['train']} / {paths['eval']}")
        return {"train": _subset(mapped["train"], n_train, seed), "eval": _subset(mapped["eval"], n_eval, seed + 1),
                "label_names": names}
    if encoding is not None and (_embedded(spec) or spec in HUB_TASKS or spec.startswith("hub:")):
        raise DataError(f"encoding applies to local files, not to {spec!r}")
    if spec == "embedded" or spec.startswith("embedded:"):
        if text_column is not None or label_column is not None or header is not None:
            raise DataError("text_column, label_column and header do not apply to the embedded task")
        from ..synthetic import embedded_difficulty, sentiment_splits

        try:
            difficulty = embedded_difficulty(spec)
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        splits = sentiment_splits(n_train=n_train or 4000, n_eval=n_eval or 1000, seed=seed, difficulty=difficulty)
        mapped, names = _map_labels({"train": splits["train"], "eval": splits["eval"]}, "embedded")
        return {"train": mapped["train"], "eval": mapped["eval"], "label_names": names}
    if spec in HUB_TASKS or spec.startswith("hub:"):
        raw, class_names = _load_hub_task(spec, text_column, label_column, eval_split)
        mapped, names = _map_labels(raw, spec, class_names)
    else:
        path = Path(spec)
        if path.is_dir():
            raw = {"train": read(_find(path, ("train",)), "train"), "eval": read(_find(path, EVAL_FILES), "eval")}
            mapped, names = _map_labels(raw, str(path))
        elif path.is_file():
            rows, names = _map_labels({"train": read(path, "train")}, str(path))
            rows = rows["train"]
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
            cut = max(1, len(rows) // 10)
            if len(rows) - cut < 1:
                raise DataError(f"{path}: {len(rows)} example(s) are too few to split into train and eval")
            mapped = {"train": [rows[i] for i in order[cut:]], "eval": [rows[i] for i in order[:cut]]}
        elif path.suffix.lower() in CLASSIFICATION_SUFFIXES or spec.startswith((".", "/", "~")):
            missing = f"; the directory {path.parent} does not exist either" if not path.parent.is_dir() else ""
            raise DataError(f"data file not found: {spec} (no such file or directory{missing}; and it is "
                            "not 'embedded', a known hub task or 'hub:NAME[:CONFIG]')")
        else:
            hint = difflib.get_close_matches(spec, list(HUB_TASKS) + ["embedded"], n=1)
            raise DataError(f"data {spec!r} is not 'embedded', a known hub task ({', '.join(HUB_TASKS)}), "
                            "'hub:NAME[:CONFIG]', or an existing file or directory"
                            + (f"; did you mean {hint[0]!r}?" if hint else ""))
    return {"train": _subset(mapped["train"], n_train, seed), "eval": _subset(mapped["eval"], n_eval, seed + 1),
            "label_names": names}


def _check_overlap(task: dict[str, Any], spec: str | Mapping[str, str], allow: bool,
                   report: Callable[[str], None] | None) -> None:
    """Count the eval texts that are also training texts; refuse more than EVAL_OVERLAP_LIMIT of
    them unless ``allow``."""
    if (isinstance(spec, str) and _embedded(spec)) or not task["eval"]:
        return  # the embedded eval set is held out by construction
    train = {_text_key(example) for example in task["train"]}
    shared = sum(_text_key(example) in train for example in task["eval"])
    if not shared:
        return
    n, share = len(task["eval"]), shared / len(task["eval"])
    where = f"{spec['eval']} (eval) / {spec['train']} (train)" if isinstance(spec, Mapping) else str(spec)
    line = f"{where}: {shared:,} of {n:,} eval texts ({share:.1%}) are also training texts"
    if share > EVAL_OVERLAP_LIMIT and not allow:
        raise DataError(f"{line}, more than {EVAL_OVERLAP_LIMIT:.0%}: the eval data is (mostly) training data, and "
                        "its scores would measure memory, not generalisation; evaluate on held-out texts, or set "
                        "allow_eval_overlap: true in the run file (allow_eval_overlap=True in Python)")
    line += "; scores on them are inflated"
    if report is not None:
        report(f"warning: {line}")
    else:
        warnings.warn(line, stacklevel=3)


def _embedded(spec: str) -> bool:
    return spec == "embedded" or spec.startswith("embedded:")


def _named_files(spec: Mapping[str, Any]) -> dict[str, Path]:
    """The train and eval files of ``{"train": PATH, "eval": PATH}``, checked."""
    keys = set(spec)
    if keys != {"train", "eval"}:
        raise DataError("data as a mapping names two files, {train: PATH, eval: PATH}; got keys "
                        f"{_show(sorted(map(str, keys)))}")
    out = {}
    for role in ("train", "eval"):
        value = spec[role]
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise DataError(f"data.{role} must be a file path, got {value!r}")
        path = Path(value)
        if path.is_dir():
            raise DataError(f"data.{role} {path} is a directory; name a file")
        out[role] = path
    return out


def _find(directory: Path, stems: Sequence[str]) -> Path:
    for stem in stems:
        for suffix in CLASSIFICATION_SUFFIXES:
            if (directory / f"{stem}{suffix}").is_file():
                return directory / f"{stem}{suffix}"
    raise DataError(f"{directory}: no {'/'.join(stems)} file ({', '.join(CLASSIFICATION_SUFFIXES)}); "
                    f"found {_show_list(sorted(p.name for p in directory.iterdir()))}")


def _subset(rows: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or n >= len(rows):
        return rows
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in sorted(order[:n])]


def _pick_split(ds: Any, wanted: str | None, name: str, role: str) -> str:
    available = list(ds.keys())
    if wanted is not None:
        if wanted not in available:
            raise DataError(f"hub dataset {name!r} has no {role} split {wanted!r}; its splits are "
                            f"{_show_list(available)}")
        return wanted
    found = next((s for s in EVAL_SPLITS if s in available), None)
    if found is None:
        raise DataError(f"hub dataset {name!r} has no eval split (looked for {', '.join(EVAL_SPLITS)}); its "
                        f"splits are {_show_list(available)}; pass eval_split")
    return found


def _load_hub_task(spec: str, text_column: ColumnSpec, label_column: str | int | None,
                   eval_split: str | None) -> tuple[dict[str, list[tuple[Text, int | str]]], list[str] | None]:
    if spec in HUB_TASKS:
        task = HUB_TASKS[spec]
        path, config, train_split = task.path, task.config, task.train_split
        text_column = text_column if text_column is not None else task.text_columns
        label_column = label_column if label_column is not None else task.label_column
        eval_split = eval_split or task.eval_split
    else:
        (path, config), train_split = _parse_hub_spec(spec), "train"
    ds = _hub_load(spec, path, config)
    out: dict[str, list[tuple[Text, int | str]]] = {}
    class_names = None
    for role, wanted in (("train", train_split), ("eval", eval_split)):
        split = _pick_split(ds, wanted, spec, role)
        part = ds[split]
        source = f"hub dataset {spec!r}, split {split!r}"
        if len(part) == 0:
            raise DataError(f"{source} is empty")
        columns = list(part.column_names)
        text_keys, label_key = _resolve_columns(text_column, label_column, columns, False, source)
        rows = [dict(zip(text_keys + (label_key,), values))
                for values in zip(*(list(part[k]) for k in text_keys + (label_key,)))]

        def where(i: int, source: str = source) -> str:
            return f"{source}, row {i + 1}"

        out[role] = _examples(rows, text_keys, label_key, where)
        _check_label_kinds([y for _, y in out[role]], where)
        if role == "train":
            feature = getattr(part, "features", {}).get(label_key)
            class_names = list(feature.names) if getattr(feature, "names", None) else None
    return out, class_names
