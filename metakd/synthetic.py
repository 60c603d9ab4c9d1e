"""Embedded default data set: generated, compositional binary sentiment sentences.

Every sentence is built top-down from a chosen label: a structure (contrast, concession,
...) decides which part carries the label, and each clause form (negation, double
negation, comparison, ...) decides which polarity of word it needs. The label is thus a
function of the composition, never of keywords found afterwards. Standard library only.

Difficulty: the ``"standard"`` mix (``"embedded"``) draws every structure and clause form by its
weight, so most sentences need composition to be read right. A mix with a given *compositional
share* (``"easy"``, or a number in [0, 1]; ``"embedded:easy"``, ``"embedded:0.3"``) makes exactly
that share of every split compositional (at least one negation, comparison, contrast or
concession) and the rest *direct*: plain or verb clauses alone, after a neutral filler, or two
joined by "and" -- every polar word agrees with the label. Labels stay balanced within each kind.
"""

from __future__ import annotations

import random

DESCRIPTION = (
    "A generated binary sentiment task (label 0 = negative, 1 = positive) of lower-case English "
    "review sentences about films, books, restaurants, hotels and more. The label follows from "
    "the sentence's composition: negation ('not', 'never', 'hardly', 'far from'), double negation "
    "('not without merit', 'i can't say it was not good'), intensifiers and downtoners, contrast "
    "where the clause after 'but'/'yet' decides, concession ('although x, y'; 'despite x, y'; "
    "'y, even though x'), comparisons ('better than expected') and neutral filler clauses. It is "
    "written by metakd itself so the benchmark runs offline, and needs more than bag-of-words "
    "cues to solve."
)

SUBJECTS = [
    "the film", "the movie", "the acting", "the soundtrack", "the plot", "the ending", "the dialogue",
    "the cinematography", "the series", "the restaurant", "the service", "the food", "the menu",
    "the dessert", "the hotel", "the room", "the staff", "the book", "the novel", "the writing",
    "the album", "the concert", "the show", "the game", "the museum", "the tour", "the play",
    "the sequel", "the documentary", "the coffee", "the flight", "the app",
]
ASPECTS = [
    "acting", "soundtrack", "plot", "service", "food", "location", "ending", "cast", "pacing",
    "setting", "dialogue", "design", "start", "reviews", "characters", "staff", "view",
]
ADJECTIVES = {
    1: ["good", "great", "excellent", "wonderful", "superb", "delightful", "charming", "brilliant",
        "enjoyable", "impressive", "moving", "memorable", "stunning", "pleasant", "solid",
        "fantastic", "lovely", "engaging", "clever", "outstanding", "remarkable", "satisfying",
        "refreshing", "gripping", "warm", "polished", "fun"],
    0: ["bad", "terrible", "awful", "dull", "boring", "tedious", "disappointing", "mediocre",
        "bland", "clumsy", "dreadful", "forgettable", "painful", "sloppy", "weak", "annoying",
        "lifeless", "poor", "unpleasant", "messy", "tiresome", "shallow", "horrible",
        "underwhelming", "awkward", "flat", "lazy"],
}
# (past, base) pairs: "i loved the film" / "i did not love the film".
OBJECT_VERBS = {
    1: [("loved", "love"), ("enjoyed", "enjoy"), ("liked", "like"), ("adored", "adore"),
        ("appreciated", "appreciate"), ("admired", "admire")],
    0: [("hated", "hate"), ("disliked", "dislike"), ("loathed", "loathe"), ("despised", "despise"),
        ("resented", "resent")],
}
# (past, base) pairs with the reviewed thing as subject: "the film bored me".
SUBJECT_VERBS = {
    1: [("impressed me", "impress me"), ("won me over", "win me over"), ("delighted me", "delight me"),
        ("blew me away", "blow me away"), ("exceeded my expectations", "exceed my expectations"),
        ("moved me", "move me")],
    0: [("bored me", "bore me"), ("let me down", "let me down"), ("annoyed me", "annoy me"),
        ("disappointed me", "disappoint me"), ("wasted my time", "waste my time"),
        ("put me off", "put me off")],
}
INTENSIFIERS = ["", "", "very", "extremely", "really", "truly", "incredibly", "quite", "pretty",
                "somewhat", "fairly", "a bit", "slightly", "rather", "mildly"]
NEGATORS = ["not", "not very", "not particularly", "not at all", "never", "never really", "hardly",
            "barely", "far from", "by no means", "anything but", "in no way"]
NEGATING_FRAMES = ["i can't say {s} was {a}", "i would not call {s} {a}", "nobody would call {s} {a}",
                   "i never found {s} {a}"]
DOUBLE_NEGATING_FRAMES = ["i can't say {s} was not {a}", "i would not say {s} was not {a}",
                          "it is not true that {s} was not {a}", "nobody could say {s} was not {a}"]
NOT_WITHOUT = {1: ["merit", "charm", "its moments", "real wit", "genuine warmth", "some lovely touches"],
               0: ["flaws", "serious problems", "its dull stretches", "annoying issues", "real weaknesses"]}
REFERENCES = ["expected", "i expected", "the trailer promised", "the reviews suggested", "i had hoped",
              "its reputation suggested", "last time", "my friends said"]
HYPE = ["the hype", "the reviews", "its reputation", "the trailer", "my expectations"]
CONTRAST = ["but", "yet", "but in the end", "though in the end", "but honestly", "and yet"]
CONCESSIVE = ["although", "even though", "while", "though"]
SUBORDINATE = ["although", "even though", "though"]  # after the main clause; no ambiguous "while"
FILLER_PREFIXES = ["to be honest", "for what it is worth", "all things considered", "in my opinion",
                   "looking back", "on my second visit", "last weekend", "as far as i am concerned"]
FILLER_SENTENCES = ["i went with my brother.", "it runs for about two hours.", "we arrived around noon.",
                    "i read it on the train.", "parking was on the street.", "it was my first time there.",
                    "we booked it a month ago.", "i saw it with my sister.", "we went on a tuesday."]

CLAUSE_FORMS = {"plain": 25, "negated": 25, "double_negation": 15, "verb": 15, "negated_verb": 10,
                "comparison": 10}
# structure -> (weight, which part decides the label)
STRUCTURES = {"single": (15, "first"), "filler": (10, "first"), "agree": (10, "first"),
              "contrast": (20, "second"), "concessive": (15, "second"), "despite": (15, "second"),
              "main_first": (15, "first")}


_FORM_NAMES, _FORM_WEIGHTS = list(CLAUSE_FORMS), list(CLAUSE_FORMS.values())
_STRUCTURE_NAMES, _STRUCTURE_WEIGHTS = list(STRUCTURES), [w for w, _ in STRUCTURES.values()]


def _random_form(rng: random.Random) -> str:
    return rng.choices(_FORM_NAMES, weights=_FORM_WEIGHTS)[0]


def _clause(rng: random.Random, polarity: int, form: str, subject: str | None = None) -> str:
    """One clause of the given form expressing `polarity` (the words' polarity is derived from it)."""
    s, flip = subject or rng.choice(SUBJECTS), 1 - polarity
    if form == "plain":
        return " ".join(filter(None, [s, "was", rng.choice(INTENSIFIERS), rng.choice(ADJECTIVES[polarity])]))
    if form == "negated":  # one negation: the adjective has the opposite polarity
        a = rng.choice(ADJECTIVES[flip])
        if rng.random() < 0.7:
            return f"{s} was {rng.choice(NEGATORS)} {a}"
        return rng.choice(NEGATING_FRAMES).format(s=s, a=a)
    if form == "double_negation":  # two negations cancel
        r = rng.random()
        if r < 0.4:
            return f"{s} was not without {rng.choice(NOT_WITHOUT[polarity])}"
        if r < 0.55:
            return f"i would not hesitate to {'recommend' if polarity else 'warn people about'} {s}"
        return rng.choice(DOUBLE_NEGATING_FRAMES).format(s=s, a=rng.choice(ADJECTIVES[polarity]))
    if form == "verb":
        if rng.random() < 0.5:
            return f"i {rng.choice(['', 'really ', 'honestly '])}{rng.choice(OBJECT_VERBS[polarity])[0]} {s}"
        return f"{s} {rng.choice(SUBJECT_VERBS[polarity])[0]}"
    if form == "negated_verb":
        if rng.random() < 0.5:
            neg = rng.choice(["did not", "didn't", "never"])
            return f"i {neg} {rng.choice(OBJECT_VERBS[flip])[1 if neg != 'never' else 0]} {s}"
        past, base = rng.choice(SUBJECT_VERBS[flip])
        return f"{s} never {past}" if rng.random() < 0.4 else f"{s} did not {base}"
    if form == "comparison":
        r = rng.random()
        if r < 0.45:
            degree = rng.choice(["", "much ", "far ", "even ", "a little "])
            return f"{s} was {degree}{'better' if polarity else 'worse'} than {rng.choice(REFERENCES)}"
        if r < 0.8:  # "not as X as": negation over a comparison
            return f"{s} was not as {rng.choice(ADJECTIVES[flip])} as {rng.choice(REFERENCES)}"
        return f"{s} {'lived' if polarity else 'did not live'} up to {rng.choice(HYPE)}"
    raise ValueError(f"unknown clause form {form!r}; expected one of {sorted(CLAUSE_FORMS)}")


def _combine(rng: random.Random, structure: str, first: tuple[str, int], second: tuple[str, int]) -> tuple[str, int]:
    """Join two (text, polarity) parts with `structure`; the label is the deciding part's polarity.

    'single' and 'filler' use only `first`; 'agree' needs both polarities equal; 'despite'
    expects `first` to be a noun phrase ("the slow start").
    """
    if structure not in STRUCTURES:
        raise ValueError(f"unknown structure {structure!r}; expected one of {sorted(STRUCTURES)}")
    (a, pa), (b, pb) = first, second
    if structure == "single":
        text = f"{a}."
    elif structure == "filler":
        r = rng.random()
        if r < 0.5:
            text = f"{rng.choice(FILLER_PREFIXES)}, {a}."
        else:
            text = f"{a}. {rng.choice(FILLER_SENTENCES)}" if r < 0.75 else f"{rng.choice(FILLER_SENTENCES)} {a}."
    elif structure == "agree":
        if pa != pb:
            raise ValueError("'agree' needs two parts of the same polarity")
        text = f"{a}, and {b}."
    elif structure == "contrast":
        text = f"{a}, {rng.choice(CONTRAST)} {b}."
    elif structure == "concessive":
        text = f"{rng.choice(CONCESSIVE)} {a}, {b}."
    elif structure == "despite":
        text = f"{rng.choice(['despite', 'in spite of'])} {a}, {b}."
    else:  # main_first: "y, even though x" -- the main clause comes first and decides
        text = f"{a}, {rng.choice(SUBORDINATE)} {b}."
    return text, (pb if STRUCTURES[structure][1] == "second" else pa)


def _example(rng: random.Random, label: int, structure: str | None = None) -> tuple[str, int]:
    """One labelled sentence with the given label, built from a (random or given) structure."""
    text, y, _ = _example_kind(rng, label, structure)
    return text, y


def _example_kind(rng: random.Random, label: int, structure: str | None = None,
                  forms: tuple[list[str], list[int]] | None = None) -> tuple[str, int, bool]:
    """``_example`` and whether the sentence is compositional (see ``DIRECT_STRUCTURES``); ``forms``
    (names, weights) replaces the clause forms' weights."""
    structure = structure or rng.choices(_STRUCTURE_NAMES, weights=_STRUCTURE_WEIGHTS)[0]
    if structure not in STRUCTURES:
        raise ValueError(f"unknown structure {structure!r}; expected one of {sorted(STRUCTURES)}")
    names, weights = forms or (_FORM_NAMES, _FORM_WEIGHTS)

    def form() -> str:
        return rng.choices(names, weights=weights)[0]

    decides_second = STRUCTURES[structure][1] == "second"
    other = label if structure == "agree" else 1 - label
    pol_first, pol_second = (other, label) if decides_second else (label, other)
    subj_first, subj_second = rng.sample(SUBJECTS, 2)  # two parts never talk about the same thing
    used = []
    if structure == "despite":
        first = (f"the {rng.choice(ADJECTIVES[pol_first])} {rng.choice(ASPECTS)}", pol_first)
    else:
        used.append(form())
        first = (_clause(rng, pol_first, used[-1], subj_first), pol_first)
    used.append(form())
    second = (_clause(rng, pol_second, used[-1], subj_second), pol_second)
    text, y = _combine(rng, structure, first, second)
    # 'single' and 'filler' use only the first clause; the second is drawn (and dropped) all the same
    counted = used[:1] if structure in ("single", "filler") else used
    direct = structure in DIRECT_STRUCTURES and all(f in DIRECT_FORMS for f in counted)
    return text, y, not direct


# ---------------------------------------------------------------------------- difficulty
DIRECT_STRUCTURES = ("single", "filler", "agree")
"""Structures whose every clause carries the label (no contrast or concession)."""
DIRECT_FORMS = ("plain", "verb")
"""Clause forms whose polar word carries the clause's polarity (no negation or comparison)."""
DIFFICULTIES = {"standard": None, "easy": 0.5}
"""Named mixes -> compositional share. "standard" (None): every structure and form by its weight
(about 88% compositional); "easy": half the sentences compositional, half direct -- the main
job's mix offline (docs/main-job.md: the probes that chose it)."""
_DIRECT_FORMS = (list(DIRECT_FORMS), [CLAUSE_FORMS[f] for f in DIRECT_FORMS])
_DIRECT_STRUCTURE_WEIGHTS = [STRUCTURES[s][0] for s in DIRECT_STRUCTURES]


def compositional_share(difficulty: str | float) -> float | None:
    """The compositional share of a difficulty: a name in ``DIFFICULTIES`` or a number in [0, 1]
    (None: the standard weighted mix)."""
    if isinstance(difficulty, str) and difficulty in DIFFICULTIES:
        return DIFFICULTIES[difficulty]
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float)) or not 0 <= difficulty <= 1:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)} or a compositional share in "
                         f"[0, 1], got {difficulty!r}")
    return float(difficulty)


def _kind_example(rng: random.Random, label: int, compositional: bool) -> tuple[str, int]:
    """A direct sentence (``DIRECT_STRUCTURES`` with ``DIRECT_FORMS`` only), or a compositional one
    (the standard generator's draws, direct ones redrawn)."""
    if not compositional:
        structure = rng.choices(DIRECT_STRUCTURES, weights=_DIRECT_STRUCTURE_WEIGHTS)[0]
        text, y, _ = _example_kind(rng, label, structure, _DIRECT_FORMS)
        return text, y
    while True:
        text, y, comp = _example_kind(rng, label)
        if comp:
            return text, y


def _mixed_draws(rng: random.Random, n: int, share: float) -> list[tuple[int, bool]]:
    """(label, compositional) for ``n`` draws: labels balanced, and in each label exactly
    round(share * count) compositional (ties to even), shuffled by ``rng``."""
    draws = []
    for label, count in ((0, (n + 1) // 2), (1, n // 2)):
        k = round(share * count)
        draws += [(label, i < k) for i in range(count)]
    rng.shuffle(draws)
    return draws


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _balanced_labels(rng: random.Random, n: int) -> list[int]:
    labels = [i % 2 for i in range(n)]
    rng.shuffle(labels)
    return labels


def generate_sentiment(n: int, seed: int = 0, difficulty: str | float = "standard") -> list[tuple[str, int]]:
    """n labelled examples, deterministic for a seed, labels balanced (|#pos - #neg| <= 1);
    ``difficulty``: see ``compositional_share``."""
    _check_count("n", n)
    share = compositional_share(difficulty)
    rng = random.Random(seed)
    if share is None:
        return [_example(rng, label) for label in _balanced_labels(rng, n)]
    return [_kind_example(rng, label, comp) for label, comp in _mixed_draws(rng, n, share)]


def _draw_unique(rng: random.Random, n: int, seen: set[str], share: float | None = None) -> list[tuple[str, int]]:
    out = []
    if share is None:
        for label in _balanced_labels(rng, n):
            out.extend(_draw_unique_label(rng, label, seen))
        return out
    for label, comp in _mixed_draws(rng, n, share):
        out.extend(_draw_unique_label(rng, label, seen, comp))
    return out


SPLITS_VERSION = 2  # 2: the held-out evaluation stream; cache keys of models trained on the task carry it
EVAL_STREAM_SEED = 1_000_003  # the held-out stream: the same evaluation sentences for every seed
EVAL_POOL = 2000  # held-out sentences no training split of any seed draws


def _held_out(n: int, share: float | None = None) -> list[tuple[str, int]]:
    """The first ``n`` sentences of the fixed held-out stream; labels alternate, so every prefix is
    balanced and a smaller evaluation set is a prefix of a larger one. With a compositional
    ``share``, both sentences of pair j (labels 0 and 1) are compositional when floor((j + 1) * share)
    > floor(j * share): every prefix of 2m sentences holds within 2 of 2m * share compositional ones."""
    rng, seen, out = random.Random(EVAL_STREAM_SEED), set(), []
    for i in range(n):
        j = i // 2
        comp = None if share is None else int((j + 1) * share) > int(j * share)
        out.extend(_draw_unique_label(rng, i % 2, seen, comp))
    return out


def _draw_unique_label(rng: random.Random, label: int, seen: set[str],
                       compositional: bool | None = None) -> list[tuple[str, int]]:
    for _ in range(1000):
        text, y = _example(rng, label) if compositional is None else _kind_example(rng, label, compositional)
        if text not in seen:
            seen.add(text)
            return [(text, y)]
    raise RuntimeError("could not draw a distinct sentence")  # the sentence space is in the millions


def sentiment_splits(n_train: int = 4000, n_eval: int = 1000, seed: int = 0,
                     difficulty: str | float = "standard") -> dict[str, list[tuple[str, int]]]:
    """{'train': ..., 'eval': ...}, deterministic. ``eval`` is held out like a dev file: the first
    ``n_eval`` sentences of a fixed stream, the same for every seed and every ``n_train``. ``train``
    is drawn by ``seed`` and never contains a sentence of the held-out pool (its first
    ``max(n_eval, EVAL_POOL)`` sentences), so no training split of any seed or size, a teacher's
    fine-tuning data included, overlaps any evaluation split of up to that size. ``difficulty``
    (see ``compositional_share``) picks the mix of both splits; "standard" is the original task."""
    _check_count("n_train", n_train)
    _check_count("n_eval", n_eval)
    share = compositional_share(difficulty)
    pool = _held_out(max(n_eval, EVAL_POOL), share)
    seen = {text for text, _ in pool}
    return {"train": _draw_unique(random.Random(seed), n_train, seen, share), "eval": pool[:n_eval]}


EMBEDDED = "embedded"


def embedded_difficulty(spec: object) -> str | float | None:
    """The difficulty a data spec names: "standard" for ``"embedded"``, D for ``"embedded:D"`` (a
    name in ``DIFFICULTIES`` or a compositional share such as 0.3); None for any other spec.
    Raises ValueError for ``"embedded:"`` followed by anything else."""
    if not isinstance(spec, str) or not (spec == EMBEDDED or spec.startswith(EMBEDDED + ":")):
        return None
    if spec == EMBEDDED:
        return "standard"
    value = spec[len(EMBEDDED) + 1:]
    if value in DIFFICULTIES:
        return value
    try:
        share = float(value)
    except ValueError:
        share = None
    if share is None or not 0 <= share <= 1:
        raise ValueError(f"data {spec!r}: write embedded:D with D one of {', '.join(DIFFICULTIES)} or a "
                         "compositional share in [0, 1], e.g. embedded:easy or embedded:0.3")
    return share


def splits_identity(data: object) -> dict[str, object]:
    """What a cache key adds for ``data``: the split version of the embedded task (and, for a mix
    other than "standard", its compositional share), nothing for any other data (files are
    identified by their hashes), so a change of the generated splits never reuses a model trained
    on the old ones."""
    try:
        difficulty = embedded_difficulty(data)
    except ValueError:
        return {}
    if difficulty is None:
        return {}
    share = compositional_share(difficulty)
    return {"embedded_splits": SPLITS_VERSION, **({} if share is None else {"embedded_share": share})}
