"""Loading data sets from the Hugging Face hub (``datasets``), with errors that say what failed."""

from __future__ import annotations

from typing import Any

from .errors import DataError

EVAL_SPLITS = ("validation", "validation_matched", "dev", "valid", "test")  # hub eval split, first present


def _hub_load(name: str, path: str, config: str | None, **kwargs: Any) -> Any:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError(f"{name!r} comes from the Hugging Face hub: install the 'datasets' package") from exc
    try:
        return datasets.load_dataset(path, config, **kwargs) if config else datasets.load_dataset(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - network and hub errors come in many types
        where = f"hub dataset {path!r}" + (f", config {config!r}" if config else "")
        raise DataError(f"cannot load {name!r} ({where}) from the Hugging Face hub; this needs network access "
                        f"unless the set is in the local hub cache: {type(exc).__name__}: {exc}") from exc


def _parse_hub_spec(spec: str) -> tuple[str, str | None]:
    name, _, config = spec[len("hub:"):].partition(":")
    if not name:
        raise DataError(f"{spec!r}: write hub:NAME or hub:NAME:CONFIG")
    return name, config or None
