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


# ---------------------------------------------------------------------------- difficulty (compositional share)
from metakd.synthetic import (  # noqa: E402
    DIFFICULTIES,
    FILLER_PREFIXES,
    FILLER_SENTENCES,
    OBJECT_VERBS,
    SUBJECT_VERBS,
    compositional_share,
    embedded_difficulty,
    splits_identity,
)

# Words and phrases that only compositional sentences contain: negation, comparison, contrast, concession.
_MARKERS = {"not", "never", "hardly", "barely", "nobody", "can't", "didn't", "without", "hesitate", "but", "yet",
            "although", "though", "while", "despite", "spite", "than", "as", "up", "no", "far"}
_FILLER_WORDS = {w for f in FILLER_PREFIXES + FILLER_SENTENCES for w in re.findall(r"[a-z']+", f)}
_POLAR = {**{w: 1 for w in ADJECTIVES[1]}, **{w: 0 for w in ADJECTIVES[0]},
          **{v.split()[0]: p for p in (0, 1) for pair in OBJECT_VERBS[p] + SUBJECT_VERBS[p] for v in pair}}


def _reads_direct(text: str, label: int) -> bool:
    """Whether a sentence reads as direct: no compositional marker outside its filler, and every
    polar word it holds has the label's polarity (and there is one)."""
    for filler in FILLER_PREFIXES + FILLER_SENTENCES:
        text = text.replace(filler, " ")
    words = re.findall(r"[a-z']+", text)
    if set(words) & _MARKERS:
        return False
    polar = [_POLAR[w] for w in words if w in _POLAR]
    assert polar, text
    return all(p == label for p in polar)


@pytest.mark.parametrize("share", [0.0, 0.3, DIFFICULTIES["easy"], 1.0])
def test_a_mix_holds_exactly_its_compositional_share_and_balanced_labels(share):
    data = generate_sentiment(1001, seed=4, difficulty=share)
    labels = [y for _, y in data]
    assert abs(labels.count(1) - labels.count(0)) <= 1
    direct = [(t, y) for t, y in data if _reads_direct(t, y)]
    # per label, round(share * count) compositional: within one of share * n for each label
    assert abs(len(data) - len(direct) - share * len(data)) <= 1.5
    # the direct part is balanced as well (labels split within each kind)
    d_labels = [y for _, y in direct]
    assert abs(d_labels.count(1) - d_labels.count(0)) <= 1


def test_the_standard_mix_is_mostly_compositional_and_the_easy_one_is_half():
    standard = generate_sentiment(2000, seed=0)
    share = 1 - sum(_reads_direct(t, y) for t, y in standard) / len(standard)
    assert 0.84 < share < 0.93  # every structure and form by its weight: ~88% compositional
    assert DIFFICULTIES["easy"] == 0.5 and compositional_share("easy") == 0.5
    assert compositional_share("standard") is None and compositional_share(0.25) == 0.25


def test_a_mix_is_deterministic_by_seed_and_its_eval_is_a_fixed_balanced_stream():
    assert generate_sentiment(300, seed=5, difficulty="easy") == generate_sentiment(300, seed=5, difficulty="easy")
    assert generate_sentiment(300, seed=5, difficulty="easy") != generate_sentiment(300, seed=6, difficulty="easy")
    assert generate_sentiment(300, seed=5, difficulty="easy") != generate_sentiment(300, seed=5)
    a, b = sentiment_splits(400, 600, seed=0, difficulty="easy"), sentiment_splits(800, 600, seed=1, difficulty="easy")
    assert a == sentiment_splits(400, 600, seed=0, difficulty="easy")
    assert a["eval"] == b["eval"] and a["train"] != b["train"]
    assert sentiment_splits(10, 200, seed=3, difficulty="easy")["eval"] == a["eval"][:200]
    held_out = {t for t, _ in a["eval"]}
    assert not held_out & {t for t, _ in a["train"]} and not held_out & {t for t, _ in b["train"]}
    for n in (2, 50, 600):  # every even prefix: balanced labels, and both kinds within 2 of half
        part = a["eval"][:n]
        assert [y for _, y in part].count(1) == n // 2
        assert abs(sum(not _reads_direct(t, y) for t, y in part) - n * 0.5) <= 2


def test_the_direct_sentences_of_a_mix_carry_the_label_in_every_polar_word():
    data = generate_sentiment(500, seed=9, difficulty=0.0)
    assert all(_reads_direct(t, y) for t, y in data)  # nothing compositional at share 0
    assert not any(_reads_direct(t, y) for t, y in generate_sentiment(500, seed=9, difficulty=1.0))


@pytest.mark.parametrize("bad", ["hard", -0.1, 1.5, True, None, "0.5"])
def test_a_bad_difficulty_is_refused(bad):
    with pytest.raises(ValueError, match="difficulty"):
        generate_sentiment(10, difficulty=bad)


def test_embedded_specs_name_a_difficulty_and_the_cache_identity_carries_the_share():
    assert embedded_difficulty("embedded") == "standard"
    assert embedded_difficulty("embedded:easy") == "easy" and embedded_difficulty("embedded:0.3") == 0.3
    assert embedded_difficulty("glue/sst2") is None and embedded_difficulty({"train": "x"}) is None
    with pytest.raises(ValueError, match="embedded:easy"):
        embedded_difficulty("embedded:hard")
    assert splits_identity("embedded") == {"embedded_splits": 2}  # the standard task's caches stay valid
    assert splits_identity("embedded:easy") == {"embedded_splits": 2, "embedded_share": 0.5}
    assert splits_identity("embedded:0.3")["embedded_share"] == 0.3 and splits_identity("../x/sst2") == {}


def test_load_task_takes_an_embedded_mix():
    from metakd.data import DataError, load_task

    task = load_task("embedded:easy", 40, 20, seed=2)
    assert task["train"] == sentiment_splits(40, 20, seed=2, difficulty="easy")["train"]
    assert task["eval"] == sentiment_splits(40, 20, seed=2, difficulty="easy")["eval"]
    with pytest.raises(DataError, match="embedded:D"):
        load_task("embedded:hard")
