"""DistillConfig: defaults, validation messages, YAML round trip, typo hints."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from metakd.config import ConfigError, DistillConfig


def test_defaults_are_valid():
    cfg = DistillConfig()
    cfg.validate()
    assert cfg.meta_update == "lora"
    assert cfg.meta_grad == "higher"
    assert 0.0 <= cfg.alpha <= 1.0
    assert cfg.temperature > 0
    assert cfg.feature_layers is None


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "field, value",
    [
        ("meta_update", "lorra"),
        ("meta_update", "LoRA"),
        ("meta_grad", "torch.func"),
        ("divergence", "kl"),
        ("jsd_beta", 0.0),
        ("jsd_beta", 1.0),
        ("fd_epsilon", 0.0),
        ("meta_grad", None),
        ("pilot", "keep"),
        ("pilot_optimizer", "rmsprop"),
        ("student_optimizer", "adam"),
        ("teacher_optimizer", "lion"),
        ("pilot_lr", 0.0),
        ("pilot_lr", -1e-3),
        ("student_lr", 0),
        ("student_lr", -5e-5),
        ("teacher_lr", 0.0),
        ("teacher_lr", -1.0),
        ("teacher_lr", float("nan")),
        ("temperature", 0.0),
        ("temperature", -2.0),
        ("temperature", float("inf")),
        ("temperature", "2"),
        ("alpha", -0.01),
        ("alpha", 1.01),
        ("alpha", float("nan")),
        ("quiz_fraction", 0.0),
        ("quiz_fraction", 1.0),
        ("quiz_fraction", 1.5),
        ("unroll_steps", 0),
        ("unroll_steps", -1),
        ("unroll_steps", 1.0),
        ("batch_size", 0),
        ("batch_size", True),
        ("eval_batch_size", 0),
        ("meta_every", 0),
        ("epochs", 0),
        ("max_length", 0),
        ("lora_r", 0),
        ("lora_dropout", 1.0),
        ("weight_decay", -0.1),
        ("feature_weight", -1.0),
        ("teacher_grad_clip", 0.0),
        ("max_steps", 0),
        ("quiz_batch_size", 0),
        ("eval_every", 0),
        ("seed", 1.5),
    ],
)
def test_invalid_value_raises_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        DistillConfig(**{field: value})
    # replace() builds a new instance and validates it as well
    with pytest.raises(ConfigError, match=field):
        DistillConfig().replace(**{field: value})


def test_feature_layers_without_feature_weight_raises():
    with pytest.raises(ConfigError) as info:
        DistillConfig(feature_layers={1: 2}, feature_weight=0.0)
    assert "feature_layers" in str(info.value) and "feature_weight" in str(info.value)
    # with a weight it is fine, and an empty map needs no weight
    assert DistillConfig(feature_layers={1: 2}, feature_weight=0.5).feature_layers == {1: 2}
    assert DistillConfig(feature_layers={}, feature_weight=0.0).feature_layers == {}


def test_negative_feature_layers_are_kept_for_the_distiller_to_resolve():
    assert DistillConfig(feature_layers={-1: -2}, feature_weight=1.0).feature_layers == {-1: -2}


@pytest.mark.parametrize("field, value", [("alpha", 0.0), ("alpha", 1.0), ("alpha", 1), ("quiz_fraction", 0.5),
                                          ("teacher_grad_clip", None), ("meta_update", "none"),
                                          ("meta_update", "full"), ("pilot", "reuse"), ("pilot_optimizer", "adam"),
                                          ("student_optimizer", "sgd"), ("max_steps", 3)])
def test_boundary_and_alternative_values_are_valid(field, value):
    assert getattr(DistillConfig(**{field: value}), field) == value


def test_validate_catches_mutation_after_construction():
    cfg = DistillConfig()
    cfg.temperature = -1.0
    with pytest.raises(ConfigError, match="temperature"):
        cfg.validate()


# ---------------------------------------------------------------------------- YAML
def test_yaml_round_trip(tmp_path):
    cfg = DistillConfig(meta_update="full", temperature=3.5, alpha=0.25, pilot_lr=2e-2, student_lr=5e-5,
                        unroll_steps=2, pilot="reuse", teacher_grad_clip=None, lora_target_modules=["query", "value"],
                        feature_layers={1: 2, 2: 4, 0: 0}, feature_weight=0.3, quiz_batch_size=16, max_steps=100,
                        seed=7, progress=False)
    path = tmp_path / "cfg.yaml"
    cfg.save_yaml(path)
    loaded = DistillConfig.from_yaml(path)
    assert loaded == cfg
    assert loaded.feature_layers == {1: 2, 2: 4, 0: 0}
    assert all(type(k) is int and type(v) is int for k, v in loaded.feature_layers.items())
    assert loaded.student_lr == 5e-5 and isinstance(loaded.student_lr, float)


def test_yaml_round_trip_of_defaults(tmp_path):
    path = tmp_path / "defaults.yaml"
    DistillConfig().save_yaml(path)
    assert DistillConfig.from_yaml(path) == DistillConfig()
    # the file is plain YAML holding every field
    assert set(yaml.safe_load(path.read_text())) == {f.name for f in dataclasses.fields(DistillConfig)}


def test_feature_layers_string_keys_become_ints(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text('feature_layers:\n  "1": "3"\n  2: 5\nfeature_weight: 1.0\n')
    assert DistillConfig.from_yaml(path).feature_layers == {1: 3, 2: 5}


def test_yaml_with_distill_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  teacher: bert-base-uncased\n"
                    "distill:\n  meta_update: full\n  temperature: 4.0\n  batch_size: 8\n")
    cfg = DistillConfig.from_yaml(path)
    assert cfg == DistillConfig(meta_update="full", temperature=4.0, batch_size=8)


def test_yaml_distill_section_is_validated(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("distill:\n  alpha: 2.0\n")
    with pytest.raises(ConfigError, match="alpha"):
        DistillConfig.from_yaml(path)


def test_empty_yaml_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert DistillConfig.from_yaml(path) == DistillConfig()


def test_yaml_not_a_mapping_raises(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        DistillConfig.from_yaml(path)


def test_yaml_typo_key_raises_with_hint(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("temprature: 3.0\n")
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        DistillConfig.from_yaml(path)


# ---------------------------------------------------------------------------- from_dict
@pytest.mark.parametrize("typo, intended", [("temprature", "temperature"), ("studnet_lr", "student_lr"),
                                            ("meta_upate", "meta_update"), ("batchsize", "batch_size")])
def test_from_dict_typo_key_suggests_the_field(typo, intended):
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_dict({typo: 1})
    message = str(info.value)
    assert typo in message
    assert "did you mean" in message and repr(intended) in message


def test_from_dict_unknown_key_without_close_match():
    with pytest.raises(ConfigError, match="unknown config key 'zzzzqqq'") as info:
        DistillConfig.from_dict({"zzzzqqq": 1})
    assert "did you mean" not in str(info.value)


def test_from_dict_matches_constructor():
    values = {"alpha": 0.9, "temperature": 1.5, "feature_layers": {2: 3}, "feature_weight": 0.1}
    assert DistillConfig.from_dict(values) == DistillConfig(**values)
    assert DistillConfig.from_dict(DistillConfig(**values).to_dict()) == DistillConfig(**values)


def test_yaml_empty_distill_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  teacher: bert-base-uncased\ndistill:\n")
    try:
        cfg = DistillConfig.from_yaml(path)
    except ConfigError:
        return  # a clear config error is acceptable too
    assert cfg == DistillConfig()


def test_yaml_numbers_in_e_notation_load_as_floats(tmp_path):
    # PyYAML (YAML 1.1) reads "5e-5" as a string; the config takes it as the number it means.
    path = tmp_path / "run.yaml"
    path.write_text("student_lr: 5e-5\ntemperature: 2\n")
    cfg = DistillConfig.from_yaml(path)
    assert cfg.student_lr == 5e-5 and cfg.temperature == 2


def test_yaml_non_numeric_string_for_a_number_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("student_lr: fast\n")
    with pytest.raises(ConfigError, match="student_lr"):
        DistillConfig.from_yaml(path)


def test_forward_differences_under_bf16_are_refused_when_the_config_is_built():
    from metakd.config import ConfigError, DistillConfig

    with pytest.raises(ConfigError, match="fd_scheme='forward' under precision='bf16'"):
        DistillConfig(meta_update="lora", meta_grad="finite_diff", fd_scheme="forward", precision="bf16")
    DistillConfig(meta_update="lora", meta_grad="finite_diff", fd_scheme="central", precision="bf16")
