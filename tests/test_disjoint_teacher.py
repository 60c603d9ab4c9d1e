"""``data_seed`` fixes the distillation's example pool across seeds, and ``finetune.disjoint`` keeps
the teacher's fine-tuning data off that pool (its train, quiz and validation splits), so the
teacher guard's validation accuracy is measured on examples the teacher never saw."""

from __future__ import annotations

import dataclasses

import pytest

from metakd.config import ConfigError
from metakd.data import DataError
from metakd.finetune import cache_key
from metakd.run import RunConfig
from metakd.run_data import load_data, teacher_training_split
from metakd.teacher_cache import teacher_origin


@pytest.fixture
def data(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"sentence number {i},{i % 2}\n" for i in range(200)))
    test = tmp_path / "test.csv"
    test.write_text("text,label\n" + "".join(f"held out {i},{i % 2}\n" for i in range(20)))
    return {"train": str(train), "eval": str(test)}


def _run(data, seed=0, **values):
    run = RunConfig.from_dict({"data": data, **values})
    return dataclasses.replace(run, distill=run.distill.replace(seed=seed))


def _texts(examples):
    return {text for text, _ in examples}


def test_data_seed_fixes_the_pool_across_seeds(data):
    pools = [_texts(load_data(_run(data, seed, n_train=50, data_seed=7), report=False)["train"]) for seed in (1, 2, 3)]
    assert len(pools[0]) == 50 and pools[0] == pools[1] == pools[2]
    by_seed = [_texts(load_data(_run(data, seed, n_train=50), report=False)["train"]) for seed in (1, 2)]
    assert by_seed[0] != by_seed[1]  # without it the pool follows distill.seed
    assert _texts(load_data(_run(data, 7, n_train=50), report=False)["train"]) == pools[0]


def test_the_disjoint_teacher_never_sees_the_pool(data):
    run = _run(data, 4, n_train=60, data_seed=0, finetune={"n_train": 100, "disjoint": True})
    teacher = _texts(teacher_training_split(run, report=False)["train"])
    assert len(teacher) == 100
    for seed in (1, 2, 5):  # every compared seed's pool, since data_seed fixes it
        pool = _texts(load_data(dataclasses.replace(run, distill=run.distill.replace(seed=seed)),
                                report=False)["train"])
        assert len(pool) == 60 and not pool & teacher
    # all that is left when finetune.n_train is unset, and the eval split untouched
    rest = teacher_training_split(_run(data, n_train=60, finetune={"disjoint": True}), report=False)
    assert len(rest["train"]) == 140 and len(rest["eval"]) == 20


def test_without_disjoint_the_teacher_subset_is_the_usual_one(data):
    run = _run(data, n_train=60, finetune={"n_train": 100})
    teacher = _texts(teacher_training_split(run, report=False)["train"])
    pool = _texts(load_data(run, report=False)["train"])
    assert len(teacher) == 100 and pool <= teacher  # the seeded subsets are nested: the pool is seen


def test_disjoint_and_data_seed_are_checked_and_keyed(data, tmp_path):
    with pytest.raises(ConfigError, match="finetune.disjoint .* needs n_train"):
        RunConfig.from_dict({"data": data, "finetune": {"disjoint": True}})
    with pytest.raises(ConfigError, match="finetune.disjoint must be true or false"):
        RunConfig.from_dict({"data": data, "n_train": 5, "finetune": {"disjoint": "yes"}})
    with pytest.raises(ConfigError, match="data_seed must be a non-negative integer"):
        RunConfig.from_dict({"data": data, "data_seed": -1})
    with pytest.raises(DataError, match="every training text is in the distillation's"):
        teacher_training_split(_run(data, n_train=500, finetune={"disjoint": True}), report=False)

    def key(**values):
        return cache_key(**teacher_origin(_run(data, **values), "some/hub-id", ["0", "1"]))

    plain = key(n_train=60)
    assert key(n_train=60, finetune={"disjoint": False}) == plain  # unset and false share a key
    assert len({plain, key(n_train=60, finetune={"disjoint": True}), key(n_train=60, data_seed=3),
                key(n_train=80, finetune={"disjoint": True})}) == 4
