"""Tests for the embedded synthetic sentiment data set."""

import random
import re

import pytest

from metakd.synthetic import (
    ADJECTIVES,
    CLAUSE_FORMS,
    CONCESSIVE,
    CONTRAST,
    DESCRIPTION,
    INTENSIFIERS,
    NOT_WITHOUT,
    STRUCTURES,
    SUBORDINATE,
    _clause,
    _combine,
    _example,
    generate_sentiment,
    sentiment_splits,
)

POS, NEG = set(ADJECTIVES[1]), set(ADJECTIVES[0])
# A plain clause "the x was [intensifier] adj" at the end of a sentence: its adjective gives its polarity.
_INTENS = "|".join(re.escape(w) for w in INTENSIFIERS if w)
PLAIN_TAIL = rf"the \w+ was (?:(?:{_INTENS}) )?(\w+)\.$"


def _adjective_polarity(word: str) -> int:
    assert word in POS or word in NEG, word
    return int(word in POS)


def test_deterministic_for_a_seed():
    assert generate_sentiment(300, seed=5) == generate_sentiment(300, seed=5)
    assert sentiment_splits(200, 50, seed=2) == sentiment_splits(200, 50, seed=2)


def test_different_seeds_differ_in_training_data_only():
    assert generate_sentiment(100, seed=0) != generate_sentiment(100, seed=1)
    first, second = sentiment_splits(100, 20, seed=0), sentiment_splits(100, 20, seed=1)
    assert first["train"] != second["train"]
    assert first["eval"] == second["eval"]  # held out like a dev file


def test_no_training_split_of_any_seed_or_size_sees_an_evaluation_sentence():
    # a teacher fine-tuned on 4,000 sentences must not have seen the evaluation sentences of a
    # smaller run at any seed (the old splits drew eval after train: 429 of 1,000 leaked at seed 0)
    held_out = {t for t, _ in sentiment_splits(1000, 2000, seed=0)["eval"]}
    for seed in (0, 1, 3):
        for n_train in (1000, 4000):
            train = {t for t, _ in sentiment_splits(n_train, 500, seed=seed)["train"]}
            assert not train & held_out, (seed, n_train)
    assert sentiment_splits(10, 300, seed=5)["eval"] == sentiment_splits(4000, 1000, seed=0)["eval"][:300]


@pytest.mark.parametrize("n", [1, 2, 7, 1001])
def test_size_balance_and_format(n):
    data = generate_sentiment(n, seed=3)
    assert len(data) == n
    labels = [y for _, y in data]
    assert set(labels) <= {0, 1}
    assert abs(labels.count(1) - labels.count(0)) <= 1
    for text, _ in data:
        assert text == text.lower() and text.endswith(".") and "  " not in text


def test_splits_disjoint_unique_and_balanced():
    splits = sentiment_splits(n_train=3000, n_eval=2000, seed=11)
    assert set(splits) == {"train", "eval"}
    train, dev = splits["train"], splits["eval"]
    assert (len(train), len(dev)) == (3000, 2000)
    train_texts, eval_texts = {t for t, _ in train}, {t for t, _ in dev}
    assert len(train_texts) == 3000 and len(eval_texts) == 2000
    assert not train_texts & eval_texts
    for part in (train, dev):
        labels = [y for _, y in part]
        assert abs(labels.count(1) - labels.count(0)) <= 1


def test_many_distinct_sentences():
    texts = {t for t, _ in generate_sentiment(5000, seed=0)}
    assert len(texts) > 4800


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10", None])
def test_bad_sizes_raise(bad):
    with pytest.raises(ValueError, match="positive integer"):
        generate_sentiment(bad)
    with pytest.raises(ValueError, match="n_train"):
        sentiment_splits(n_train=bad)
    with pytest.raises(ValueError, match="n_eval"):
        sentiment_splits(n_eval=bad)


@pytest.mark.parametrize("first_pol", [0, 1])
def test_contrast_and_concession_follow_the_second_part(first_pol):
    rng = random.Random(0)
    first = ("the plot was superb" if first_pol else "the plot was dull", first_pol)
    second = ("the acting was dull" if first_pol else "the acting was superb", 1 - first_pol)
    text, label = _combine(rng, "contrast", first, second)
    assert label == 1 - first_pol
    connector = text[len(first[0]) + 2 : -len(second[0]) - 2]
    assert text.startswith(first[0] + ", ") and text.endswith(" " + second[0] + ".") and connector in CONTRAST
    text, label = _combine(rng, "concessive", first, second)
    assert label == 1 - first_pol and text.split(" the plot")[0] in CONCESSIVE
    text, label = _combine(rng, "despite", ("the slow start", first_pol), second)
    assert label == 1 - first_pol and text.endswith(", " + second[0] + ".")
    # "y, even though x": the main clause comes first and decides.
    text, label = _combine(rng, "main_first", first, second)
    assert label == first_pol and any(f", {c} the acting" in text for c in SUBORDINATE)


def test_combine_rejects_bad_structures():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="same polarity"):
        _combine(rng, "agree", ("the food was good", 1), ("the room was awful", 0))
    with pytest.raises(ValueError, match="unknown structure"):
        _combine(rng, "sarcasm", ("a", 1), ("b", 0))
    with pytest.raises(ValueError, match="unknown clause form"):
        _clause(rng, 1, "sarcasm")


@pytest.mark.parametrize("polarity", [0, 1])
def test_clause_forms_compose_polarity(polarity):
    rng = random.Random(polarity)
    for _ in range(200):
        words = _clause(rng, polarity, "plain", "the film").split()
        assert words[:2] == ["the", "film"] and _adjective_polarity(words[-1]) == polarity
        # One negation: the adjective has the opposite polarity.
        text = _clause(rng, polarity, "negated")
        assert set(text.split()) & {"not", "never", "hardly", "barely", "far", "no", "but", "nobody", "can't"}
        assert _adjective_polarity(text.split()[-1]) == 1 - polarity
        # Two negations cancel.
        text = _clause(rng, polarity, "double_negation")
        if "not without" in text:
            assert any(text.endswith(" " + phrase) for phrase in NOT_WITHOUT[polarity])
        elif "hesitate" in text:
            assert ("recommend" in text) == bool(polarity)
        else:
            assert sum(w in ("not", "nobody", "can't") for w in text.split()) == 2
            assert _adjective_polarity(text.split()[-1]) == polarity


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("label", [0, 1])
def test_every_structure_yields_the_requested_label(structure, label):
    rng = random.Random(7)
    for _ in range(50):
        text, y = _example(rng, label, structure)
        assert y == label and text.endswith(".")


def test_generated_contrast_sentences_follow_the_clause_after_but():
    """Hand-checkable: in 'x, but/yet the y was [very] adj.' the final adjective decides."""
    found = 0
    for text, label in generate_sentiment(5000, seed=1):
        match = re.search(rf", (?:but|yet) {PLAIN_TAIL}", text)
        if match:
            found += 1
            assert label == _adjective_polarity(match.group(1)), text
    assert found >= 20


def test_generated_concessive_sentences_follow_the_main_clause():
    found = 0
    for text, label in generate_sentiment(5000, seed=2):
        match = re.search(rf", {PLAIN_TAIL}", text)
        if match and text.startswith(("although ", "even though ", "despite ")):
            found += 1
            assert label == _adjective_polarity(match.group(1)), text
    assert found >= 20


def test_description_and_forms_are_documented():
    assert "negation" in DESCRIPTION and len(DESCRIPTION) > 200
    assert {"plain", "negated", "double_negation", "comparison"} <= set(CLAUSE_FORMS)


def test_a_new_split_version_changes_the_cache_identity_of_the_embedded_task_only(monkeypatch, tmp_path):
    from metakd import synthetic
    from metakd.teacher_cache import data_identity

    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\t1\n")
    before, file_before = data_identity("embedded"), data_identity(str(tmp_path))
    monkeypatch.setattr(synthetic, "SPLITS_VERSION", synthetic.SPLITS_VERSION + 1)
    assert data_identity("embedded") != before
    assert data_identity(str(tmp_path)) == file_before
