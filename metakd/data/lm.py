"""Language-modelling corpora: ``load_lm_corpus`` from a local file or directory or the hub,
cut into documents (``paragraphs``, ``wikitext_articles``) and split into train and eval."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import NamedTuple

import torch

from .errors import DataError
from .hub import EVAL_SPLITS, _hub_load, _parse_hub_spec

LM_SUFFIXES = (".txt", ".raw", ".tokens")


class HubCorpus(NamedTuple):
    """A language-modelling corpus on the hub. ``rows``: 'lines' (WikiText: rows are lines of
    articles, joined and cut at the top-level headings) or 'documents' (one row, one document)."""

    path: str
    config: str | None
    text_column: str
    train_split: str
    eval_split: str | None  # None: split the train documents (``split``, ``eval_fraction``)
    rows: str
    max_documents: int | None  # stream only the first documents of each split (None: load it whole)


_WIKITEXT2 = HubCorpus("Salesforce/wikitext", "wikitext-2-raw-v1", "text", "train", "test", "lines", None)
LM_CORPORA: dict[str, HubCorpus] = {
    "wikitext": _WIKITEXT2, "wikitext2": _WIKITEXT2, "wikitext-2": _WIKITEXT2,
    "wikitext-103": HubCorpus("Salesforce/wikitext", "wikitext-103-raw-v1", "text", "train", "test", "lines", None),
    "openwebtext": HubCorpus("Skylion007/openwebtext", None, "text", "train", None, "documents", 10_000),
}
LM_SPLITS = ("random", "tail", "contiguous")


def load_lm_corpus(spec: str | Path, *, eval_fraction: float = 0.1, seed: int = 0, split: str | None = None,
                   max_documents: int | None = None, text_column: str | None = None,
                   eval_split: str | None = None) -> dict[str, list[str]]:
    """Documents for causal-LM distillation: ``{"train": [str, ...], "eval": [str, ...]}``.

    ``spec``:

    * a text file (``.txt``, ``.raw``, ``.tokens``), cut into documents and split:
      ``split="random"``: blank-line-separated documents, ``eval_fraction`` of them to eval by
      ``seed`` (default for files named like ``openwebtext*``); ``"contiguous"``: the text cut once
      at the first line end after ``1 - eval_fraction`` of its characters, one document each side
      (default for ``*shakespeare*`` paths); ``"tail"``: blank-line-separated documents, the last
      ``eval_fraction`` of them to eval (default for any other file).
    * a directory: with ``*train*`` and ``*test*``/``*valid*`` files, train on train and evaluate
      on test (else valid); without a train file, train on valid and evaluate on test (the
      shared ``wikitext2/``, as its README says); with a single text file, as that file. WikiText
      files (``wiki.*``, ``.raw``, ``.tokens``) are cut into articles at their `` = Title = ``
      lines, other files at blank lines.
    * ``"wikitext"`` (wikitext-2-raw-v1; also ``"wikitext-103"``) or ``"openwebtext"`` (the first
      ``max_documents``, default 10,000, streamed, split by seed) from the hub, or
      ``"hub:NAME[:CONFIG]"`` (one row, one document; column ``text_column``, default ``text``;
      train split ``train``, eval ``eval_split`` or the first of validation/dev/valid/test, else a
      split of train). Needs network (or the hub cache). These names come before paths: write
      ``./wikitext`` for a local folder of that name.

    Whitespace-only documents are dropped; an empty corpus or split is a DataError.
    """
    if not 0 < eval_fraction < 1:
        raise DataError(f"eval_fraction must lie in (0, 1), got {eval_fraction}")
    if split is not None and split not in LM_SPLITS:
        raise DataError(f"split must be one of {', '.join(LM_SPLITS)}, got {split!r}")
    name = str(spec)
    if name in LM_CORPORA or name.startswith("hub:"):
        return _lm_from_hub(name, eval_fraction, seed, split, max_documents, text_column, eval_split)
    path = Path(spec)
    if path.is_dir():
        return _lm_from_directory(path, eval_fraction, seed, split)
    if path.is_file():
        return _lm_from_file(path, eval_fraction, seed, split)
    raise DataError(f"corpus {name!r} is not a text file, a directory, a known corpus "
                    f"({', '.join(LM_CORPORA)}) or 'hub:NAME[:CONFIG]'")


def _read_corpus_file(path: Path) -> str:
    if path.suffix.lower() not in LM_SUFFIXES:
        raise DataError(f"{path}: unsupported corpus file type {path.suffix or '(no suffix)'!r}; "
                        f"use {', '.join(LM_SUFFIXES)}")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise DataError(f"{path} is empty")
    return text


def _is_wikitext(path: Path) -> bool:
    return path.name.lower().startswith("wiki.") or path.suffix.lower() in (".raw", ".tokens")


def paragraphs(text: str) -> list[str]:
    """Documents of a text separated by blank lines (whitespace-only lines); each keeps its inner
    line breaks and indentation, without the surrounding newlines."""
    parts = re.split(r"\n(?:[ \t]*\n)+", text)
    return [p.strip("\n") for p in parts if p.strip()]


_WIKI_TITLE = re.compile(r"^ = [^=].* = *$", re.MULTILINE)


def wikitext_articles(text: str) -> list[str]:
    """WikiText cut into articles at the top-level `` = Title = `` lines (not `` = = Section = = ``).
    The articles, joined, give back the text from the first title on."""
    starts = [m.start() for m in _WIKI_TITLE.finditer(text)]
    if not starts:
        return [text] if text.strip() else []
    pieces = [text[:starts[0]]] + [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    return [p for p in pieces if p.strip()]


def _documents(path: Path) -> list[str]:
    text = _read_corpus_file(path)
    return wikitext_articles(text) if _is_wikitext(path) else paragraphs(text)


def _lm_from_file(path: Path, eval_fraction: float, seed: int, split: str | None) -> dict[str, list[str]]:
    if split is None:
        lowered = f"{path.parent.name}/{path.name}".lower()
        split = "random" if "openwebtext" in lowered else "contiguous" if "shakespeare" in lowered else "tail"
    if split == "contiguous":
        return _contiguous(_read_corpus_file(path), eval_fraction, str(path))
    return _split_documents(_documents(path), split, eval_fraction, seed, str(path))


def _contiguous(text: str, eval_fraction: float, source: str) -> dict[str, list[str]]:
    """One cut at the first line end after ``1 - eval_fraction`` of the characters."""
    end = text.find("\n", int(len(text) * (1 - eval_fraction)))
    cut = len(text) if end < 0 else end + 1
    if not text[:cut].strip() or not text[cut:].strip():
        raise DataError(f"{source}: too short to cut {eval_fraction:.0%} off for eval at a line end")
    return {"train": [text[:cut]], "eval": [text[cut:]]}


def _split_documents(docs: list[str], split: str, eval_fraction: float, seed: int,
                     source: str) -> dict[str, list[str]]:
    if split == "contiguous":
        return _contiguous("\n\n".join(docs), eval_fraction, source)
    if len(docs) < 2:
        raise DataError(f"{source}: {len(docs)} document(s); need at least 2 to split into train and eval")
    n_eval = min(len(docs) - 1, max(1, round(len(docs) * eval_fraction)))
    if split == "tail":
        return {"train": docs[:-n_eval], "eval": docs[-n_eval:]}
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_eval])
    return {"train": [d for i, d in enumerate(docs) if i not in held],
            "eval": [d for i, d in enumerate(docs) if i in held]}


def _lm_from_directory(path: Path, eval_fraction: float, seed: int, split: str | None) -> dict[str, list[str]]:
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in LM_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"{path}: no corpus file ({', '.join(LM_SUFFIXES)}); found "
                        f"{sorted(p.name for p in path.iterdir())}")

    def named(*words: str) -> Path | None:
        return next((p for p in files if any(w in p.name.lower() for w in words)), None)

    train, valid, test = named("train"), named("valid", "dev"), named("test")
    if train is not None and (test or valid) is not None:
        pair = (train, test or valid)
    elif train is None and valid is not None and test is not None:
        pair = (valid, test)
    elif len(files) == 1:
        return _lm_from_file(files[0], eval_fraction, seed, split)
    else:
        raise DataError(f"{path}: cannot tell the train and eval files among {[p.name for p in files]} "
                        "(name them *train* and *test*/*valid*, or pass a single file)")
    out = {"train": _documents(pair[0]), "eval": _documents(pair[1])}
    for role, file in zip(("train", "eval"), pair):
        if not out[role]:
            raise DataError(f"{file} holds no documents")
    return out


def _lm_from_hub(name: str, eval_fraction: float, seed: int, split: str | None, max_documents: int | None,
                 text_column: str | None, eval_split: str | None) -> dict[str, list[str]]:
    if name in LM_CORPORA:
        src = LM_CORPORA[name]
    else:
        path, config = _parse_hub_spec(name)
        src = HubCorpus(path, config, "text", "train", None, "documents", None)
    column = text_column or src.text_column
    limit = max_documents if max_documents is not None else src.max_documents
    if limit is not None and limit < 1:
        raise DataError(f"max_documents must be positive, got {limit}")
    ds = _hub_load(name, src.path, src.config, **({"streaming": True} if limit is not None else {}))
    available = list(ds.keys())
    if src.train_split not in available:
        raise DataError(f"hub corpus {name!r} has no split {src.train_split!r}; its splits are {available}")
    held_split = eval_split or src.eval_split
    if held_split is None and name not in LM_CORPORA:
        held_split = next((s for s in EVAL_SPLITS if s in available), None)
    if held_split is not None and held_split not in available:
        raise DataError(f"hub corpus {name!r} has no split {held_split!r}; its splits are {available}")

    def documents(split_name: str) -> list[str]:
        part = ds[split_name]
        column_names = getattr(part, "column_names", None)
        if limit is None and column_names and column in column_names:
            part = ({column: value} for value in part[column])  # a whole split: read the column at once
        rows = []
        for i, row in enumerate(itertools.islice(part, limit)):
            if column not in row:
                raise DataError(f"hub corpus {name!r}, split {split_name!r}: no column {column!r}; "
                                f"columns are {list(row)}")
            value = row[column]
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise DataError(f"hub corpus {name!r}, split {split_name!r}, row {i + 1}: column {column!r} "
                                f"holds {type(value).__name__}, not text")
            rows.append(value)
        if src.rows == "lines":
            docs = wikitext_articles("".join(r if r.endswith("\n") else r + "\n" for r in rows))
        else:
            docs = [r for r in rows if r.strip()]
        if not docs:
            raise DataError(f"hub corpus {name!r}, split {split_name!r} holds no documents")
        return docs

    train = documents(src.train_split)
    if held_split is not None:
        return {"train": train, "eval": documents(held_split)}
    return _split_documents(train, split or "random", eval_fraction, seed, f"hub corpus {name!r}")
