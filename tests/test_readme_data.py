"""Every run-file example of the "Describing your data" section (docs/data.md, moved there from the
README) loads as it says: the test reads the section's YAML blocks, writes files of the shape each
names, and loads the data through the run file's path (``RunConfig`` + ``load_data``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from metakd.run import RunConfig, load_data

DATA_PAGE = Path(__file__).resolve().parents[1] / "docs" / "data.md"
TOPICS = ("World", "Sports", "Business", "Sci/Tech")


def _section() -> str:
    text = DATA_PAGE.read_text(encoding="utf-8")
    start = text.index("## Describing your data")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", _section(), flags=re.S)


def _write_files(root: Path) -> dict[str, tuple[int, int, list[str]]]:
    """Files for each example, and what each must load as: (train rows, eval rows, label names). Eval
    texts are held out: eval data that is mostly training data is refused."""
    (root / "glue_rte").mkdir()
    pairs = [f"A man walks {i}.\tA person moves {i}.\t{'entailment' if i % 2 else 'not_entailment'}\n"
             for i in range(12)]
    (root / "glue_rte" / "train.tsv").write_text("\ufeffsentence1\tsentence2\tlabel\n" + "".join(pairs))
    held_out = [p.replace("walks", "runs") for p in pairs[:4]]
    (root / "glue_rte" / "dev.tsv").write_text("sentence1\tsentence2\tlabel\n" + "".join(held_out))
    (root / "reviews.csv").write_text("text,label\n" + "".join(f'"good, truly {i}",1\n"bad {i}",0\n' for i in range(10)))
    (root / "news").mkdir()
    news = [f'{TOPICS[i % 4]},"Title {i}","Description of story {i}, at some length"\n' for i in range(40)]
    (root / "news" / "train.csv").write_text("".join(news))
    (root / "news" / "test.csv").write_text("".join(row.replace("Title", "Test title") for row in news[:8]))
    (root / "qnli").mkdir()
    for name, n in (("train.jsonl", 10), ("validation.jsonl", 4)):
        q = "q" if name.startswith("train") else "eval q"
        (root / "qnli" / name).write_text("".join(json.dumps({"question": f"{q}{i}?", "sentence": f"s {i}.",
                                                              "label": i % 2}) + "\n" for i in range(n)))
    (root / "cola").mkdir()
    cola = [f"gj04\t{i % 2}\t{'' if i % 2 else '*'}\tSentence number {i} here.\n" for i in range(10)]
    (root / "cola" / "train.tsv").write_text("".join(cola))
    (root / "cola" / "dev.tsv").write_text("".join(line.replace("number", "held out") for line in cola[:2]))
    (root / "topics.txt").write_text("".join(f"__label__{t} The {t} match {i} ended\n" for i in range(5)
                                             for t in ("sports", "politics")))
    return {"glue_rte/": (12, 4, ["entailment", "not_entailment"]), "reviews.csv": (18, 2, ["0", "1"]),
            "news/train.csv": (40, 8, sorted(TOPICS)), "qnli/": (10, 4, ["0", "1"]), "cola/": (10, 2, ["0", "1"]),
            "topics.txt": (9, 1, ["politics", "sports"])}


def test_readme_data_examples_load_as_documented(tmp_path, monkeypatch):
    blocks = _blocks()
    expected = _write_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    seen = set()
    for block in blocks:
        values = yaml.safe_load(block)
        data = values["data"]
        key = data["train"] if isinstance(data, dict) else data
        assert key in expected, f"docs/data.md example {block!r} has no test files here"
        seen.add(key)
        split = load_data(RunConfig.from_dict(values))
        assert (len(split["train"]), len(split["eval"]), split["label_names"]) == expected[key], block
    assert seen == set(expected)  # every example of the section, and no stale one here


def test_readme_names_every_eval_file_and_metric():
    from metakd.data import EVAL_FILES

    section = _section()
    for stem in EVAL_FILES:
        assert f"`{stem}`" in section, stem
    assert "macro-averaged" in section and "`mcc`" in section


def test_header_key_is_checked():
    with pytest.raises(Exception, match="header must be true, false or null"):
        RunConfig.from_dict({"header": "yes"})
