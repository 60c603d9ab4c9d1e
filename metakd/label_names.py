"""Label names that travel with the models: written into ``config.json`` (``id2label`` /
``label2id``) of every saved classifier, and checked against the data's before a trained
classifier is used, so a teacher trained on another label set is never taken silently."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from .data import DataError
from .data.errors import _show

_DEFAULT = re.compile(r"LABEL_\d+")


def set_label_names(model: Any, names: Sequence[str]) -> None:
    """Write ``names`` (index = label id) into the model's config as ``id2label``/``label2id``."""
    config = getattr(model, "config", None)
    if config is None or not names:
        return
    config.id2label = {i: str(n) for i, n in enumerate(names)}
    config.label2id = {str(n): i for i, n in enumerate(names)}


def saved_label_names(config: Any) -> list[str] | None:
    """The label names a model config carries (index = id), or None when it has only the
    ``transformers`` defaults ``LABEL_0, LABEL_1, ...`` (nothing to check against)."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i)))) for i in range(len(id2label))]
    if not names or all(_DEFAULT.fullmatch(n) for n in names):
        return None
    return names


def align_labels(splits: dict[str, Any], model_names: Sequence[str], source: str, role: str = "teacher",
                 label_map: Mapping[str, str] | None = None) -> tuple[dict[str, Any], bool]:
    """``splits`` (``load_task``'s result) with label ids renumbered to the model's ``id2label``.

    The data's label names, mapped by ``label_map`` (data name → model name) where given, must be
    the model's names (in any order); otherwise DataError says both sets. Returns the splits
    (``label_names`` then follow the model's ids) and whether any id changed."""
    data_names = [str(n) for n in splits["label_names"]]
    label_map = {str(k): str(v) for k, v in (label_map or {}).items()}
    unknown = sorted(set(label_map) - set(data_names))
    if unknown:
        raise DataError(f"label_map names data labels {_show(unknown)} that the data does not have "
                        f"(its labels: {_show(data_names)})")
    mapped = [label_map.get(n, n) for n in data_names]
    model_names = [str(n) for n in model_names]
    if sorted(mapped) != sorted(model_names):
        raise DataError(f"the {role} {source!r} was trained on labels {_show(model_names)} but the data has "
                        f"{_show(data_names)}; use a {role} trained on this label set, or map the data's labels to "
                        f"the {role}'s with label_map: {{DATA_LABEL: {role.upper()}_LABEL, ...}} in the run file")
    index = {name: i for i, name in enumerate(model_names)}
    new_id = [index[m] for m in mapped]
    if new_id == list(range(len(new_id))) and mapped == data_names:
        return splits, False
    out = dict(splits)
    for split in ("train", "eval"):
        out[split] = [(t, new_id[y]) for t, y in splits[split]]
    names = [""] * len(new_id)
    for old, new in enumerate(new_id):
        names[new] = data_names[old]
    out["label_names"] = names
    return out, True
