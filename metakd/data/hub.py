"""Loading data sets from the Hugging Face hub (``datasets``), with errors that say what failed."""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import DataError

EVAL_SPLITS = ("validation", "validation_matched", "dev", "valid", "test")  # hub eval split, first present


def _hub_load(name: str, path: str, config: str | None, **kwargs: Any) -> Any:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError(f"{name!r} comes from the Hugging Face hub: install the 'datasets' package") from exc
    where = f"hub dataset {path!r}" + (f", config {config!r}" if config else "")
    status, why = hub_status(path, "dataset") if is_hub_id(path) and not os.path.exists(path) else ("", "")
    if status == "missing":
        raise DataError(f"cannot load {name!r}: there is no {where} on the Hugging Face hub (or it is private: "
                        "log in with `hf auth login`)")
    if status in ("offline", "unreachable"):
        raise DataError(f"cannot load {name!r}: {where} is not in the local cache and the Hugging Face hub is "
                        f"{'switched off (HF_HUB_OFFLINE)' if status == 'offline' else 'unreachable (offline?)'}; "
                        f"download it once with network access, or use a local file ({why})")
    try:
        return datasets.load_dataset(path, config, **kwargs) if config else datasets.load_dataset(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - network and hub errors come in many types
        raise DataError(f"cannot load {name!r} ({where}) from the Hugging Face hub; this needs network access "
                        f"unless the set is in the local hub cache: {type(exc).__name__}: {exc}") from exc


_HUB_PART = re.compile(r"[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is shaped like a hub repository id: ``NAME`` or ``ORG/NAME`` (letters, digits,
    '-', '_', '.'; no '--' or '..'; no leading or trailing '-' or '.')."""
    parts = name.split("/")
    return (0 < len(parts) <= 2 and all(_HUB_PART.fullmatch(p) for p in parts)
            and "--" not in name and ".." not in name)


def _in_cache(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import constants, try_to_load_from_cache

    if repo_type == "model":
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    hub_dir = os.path.join(constants.HF_HUB_CACHE, f"{repo_type}s--" + repo_id.replace("/", "--"))
    if os.path.isdir(hub_dir):
        return True
    try:  # processed sets live in the datasets cache: ORG___NAME
        from datasets import config as ds_config
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    return os.path.isdir(os.path.join(str(ds_config.HF_DATASETS_CACHE), repo_id.replace("/", "___")))


def hub_status(repo_id: str, repo_type: str = "model", timeout: float = 10.0) -> tuple[str, str]:
    """Can the hub repository ``repo_id`` be loaded? Checked before loading it, because loading
    an unreachable repository retries for about a minute before it fails.

    Returns ``(status, why)``: "cached" (in the local hub cache: loadable offline), "reachable"
    (the hub answered; gated repositories included: the loader explains those), "missing" (the hub
    has no such repository, or it is private), "offline" (``HF_HUB_OFFLINE`` is set and it is not
    cached) or "unreachable" (one request, without retries, did not reach the hub).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub import errors as hf_errors

    if _in_cache(repo_id, repo_type):
        return "cached", ""
    if constants.HF_HUB_OFFLINE:
        return "offline", "HF_HUB_OFFLINE is set"
    api = HfApi()
    info = api.dataset_info if repo_type == "dataset" else api.model_info
    try:
        info(repo_id, timeout=timeout)
    except hf_errors.GatedRepoError:
        return "reachable", ""
    except hf_errors.RepositoryNotFoundError as exc:
        return "missing", str(exc).splitlines()[0]
    except hf_errors.OfflineModeIsEnabled as exc:
        return "offline", str(exc).splitlines()[0]
    except hf_errors.HfHubHTTPError:  # the hub answered (5xx, rate limit, ...): let the loader report it
        return "reachable", ""
    except Exception as exc:  # noqa: BLE001 - connection errors differ between HTTP clients
        first = (str(exc).strip().splitlines() or [""])[0]
        return "unreachable", f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return "reachable", ""


def _parse_hub_spec(spec: str) -> tuple[str, str | None]:
    name, _, config = spec[len("hub:"):].partition(":")
    if not name:
        raise DataError(f"{spec!r}: write hub:NAME or hub:NAME:CONFIG")
    return name, config or None
