"""Bad input fails before any expensive work, with one clear line and a non-zero exit.

Each case runs ``python -m metakd distill RUN.yaml`` on a tiny run file with one thing wrong and
checks: exit code 2, exactly one stderr line ``metakd: error: ...`` that names the problem, no
traceback, nothing trained or saved. There is no network here (nor in CI): hub ids must fail in
seconds, not after the hub client's retries.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

WORDS = ("the film was good", "a bad plot", "what a fine hotel", "the soup was cold", "never again",
         "bright and warm")
DISTILL = "{max_steps: 1, batch_size: 4, max_length: 16, progress: false}"
LM_DISTILL = "{meta_update: lora, meta_grad: jvp, max_steps: 1, batch_size: 4, max_length: 16, progress: false}"


def _rows(n_classes: int, offset: int = 0) -> str:
    return "".join(f"{w} {i},{i % n_classes + offset}\n" for i in range(8) for w in WORDS)


def _word_tokenizer(words):
    """A small word-level fast tokenizer (ids: <pad> 0, <eos> 1, <unk> 2, then ``words``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _save_lm(directory: Path, words) -> None:
    from metakd.models import tiny_causal_lm

    tokenizer = _word_tokenizer(words)
    tiny_causal_lm("gpt2", vocab_size=len(tokenizer), max_positions=64).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Data files and tiny saved models, shared by the cases."""
    from metakd.models import tiny_classifier

    root = tmp_path_factory.mktemp("bad_input")
    f = {"root": root}
    for name, text in {"good.csv": "text,label\n" + _rows(2), "three.csv": "text,label\n" + _rows(3),
                       "negative.csv": "text,label\n" + _rows(2, offset=-1), "one_class.csv": "text,label\n" + _rows(1),
                       "empty.csv": "", "empty.txt": "", "blank.tsv": "\n   \n\n", "header_only.csv": "text,label\n",
                       "odd_columns.csv": "review_text,stars\n" + _rows(2),
                       "no_label.jsonl": "".join('{"text": "nice film %d", "stars": 1}\n' % i for i in range(20)),
                       "long.csv": "text,label\n" + "".join(f"{'word ' * 600}{i},{i % 2}\n" for i in range(12)),
                       "corpus.txt": "\n\n".join(" ".join(WORDS[(i + j) % 6] for j in range(6)) for i in range(40))
                       }.items():
        (root / name).write_text(text)
        f[name] = root / name
    # issue 31: a Latin-1 file, a first row that may be a header or data, an eval file of training rows
    f["latin1.csv"] = root / "latin1.csv"
    f["latin1.csv"].write_bytes(("text,label\n" + _rows(2).replace("good", "gr\u00e9at")).encode("latin-1"))
    f["weak_header.tsv"] = root / "weak_header.tsv"
    f["weak_header.tsv"].write_text("Happy birthday mom\tjoy\n" + "".join(f"{w} {i}\t{'pos' if i % 2 else 'neg'}\n"
                                                                         for i in range(8) for w in WORDS))
    (root / "copied_eval").mkdir()
    for name in ("train.csv", "dev.csv"):
        (root / "copied_eval" / name).write_text("text,label\n" + _rows(2))
    f["copied_eval"] = root / "copied_eval"
    # a classifier fine-tuned for 2 labels, given as the teacher and found in output/teacher
    two = tiny_classifier("bert", num_labels=2)
    two.config.architectures = ["BertForSequenceClassification"]
    for target in (root / "two_label_classifier", root / "trained_out" / "teacher"):
        two.save_pretrained(str(target))
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "notes.txt").write_text("no config.json here")
    lm_words = sorted({w for line in WORDS for w in line.split()})
    _save_lm(root / "lm_teacher", lm_words)
    _save_lm(root / "lm_other_vocab", list(reversed(lm_words)))  # same size, different ids
    _save_lm(root / "lm_bigger_vocab", lm_words + ["extra", "tokens"])  # agrees on the shared ids
    f.update({k: root / k for k in ("two_label_classifier", "trained_out", "not_a_model", "lm_teacher",
                                    "lm_other_vocab", "lm_bigger_vocab")})
    return f


def _cls(f, extra: str = "", distill: str = DISTILL, **top) -> str:
    values = {"teacher": "embedded", "student": '"first:1"', "data": f["good.csv"], "n_train": 16, "n_eval": 8,
              "output": f["root"] / "out", **top}
    return "".join(f"{k}: {v}\n" for k, v in values.items() if v is not None) + f"distill: {distill}\n" + extra


def _lm(f, extra: str = "", distill: str = LM_DISTILL, **top) -> str:
    values = {"task": "causal_lm", "teacher": f["lm_teacher"], "student": '"layers:0"', "data": f["corpus.txt"],
              "n_eval": 4, "output": f["root"] / "out", **top}
    return "".join(f"{k}: {v}\n" for k, v in values.items() if v is not None) + f"distill: {distill}\n" + extra


# name -> (run file text from the files, phrase the error line must hold, extra CLI arguments)
CASES = {
    # ------------------------------------------------------------------ models
    "teacher directory missing": (lambda f: _cls(f, teacher=f["root"] / "no_such_teacher"),
                                  "teacher model '{root}/no_such_teacher': no such directory", ()),
    "teacher hub id unknown or unreachable": (lambda f: _cls(f, teacher="no-such-org/no-such-model-xyz"),
                                              "teacher model 'no-such-org/no-such-model-xyz' is neither a local "
                                              "directory nor", ()),
    "student hub id unknown or unreachable": (lambda f: _cls(f, student="no-such-org/no-such-model-xyz"),
                                              "student model 'no-such-org/no-such-model-xyz' is neither a local "
                                              "directory nor", ()),
    "teacher directory without config.json": (lambda f: _cls(f, teacher=f["not_a_model"]),
                                              "holds no config.json, so it is not a saved model", ()),
    "student directory missing (causal_lm)": (lambda f: _lm(f, student=f["root"] / "no_such_student"),
                                              "student model '{root}/no_such_student': no such directory", ()),
    "student first:k beyond the teacher": (lambda f: _cls(f, student='"first:99"'), "1 <= k <= 6", ()),
    "student layers: not integers": (lambda f: _cls(f, student='"layers:a,b"'), "layers:I,J,... takes block", ()),
    "student random: unknown field": (lambda f: _cls(f, student='"random:no_such_field=3"'),
                                      "BertConfig has no field(s) ['no_such_field']", ()),
    # ------------------------------------------------------------------ data
    "data file missing": (lambda f: _cls(f, data=f["root"] / "nope.csv"), "data file not found: {root}/nope.csv", ()),
    "data file empty": (lambda f: _cls(f, data=f["empty.csv"]), "empty.csv holds no examples", ()),
    "data file of blank lines": (lambda f: _cls(f, data=f["blank.tsv"]), "blank.tsv holds no examples", ()),
    "data file with a header only": (lambda f: _cls(f, data=f["header_only.csv"]),
                                     "holds no examples (only a header: ['text', 'label'])", ()),
    "no text column found": (lambda f: _cls(f, data=f["odd_columns.csv"]),
                             "no text column (looked for pairs", ()),
    "named text column missing": (lambda f: _cls(f, text_column="sentence"),
                                  "no text column 'sentence'; columns are ['text', 'label']", ()),
    "named label column missing": (lambda f: _cls(f, label_column="stars"),
                                   "no label column 'stars'; columns are ['text', 'label']", ()),
    "jsonl without a label column": (lambda f: _cls(f, data=f["no_label.jsonl"]),
                                     "no label column (looked for label, labels", ()),
    "hub data set unknown or unreachable": (lambda f: _cls(f, data="hub:no-such-org/no-such-data-xyz"),
                                            "cannot load 'hub:no-such-org/no-such-data-xyz'", ()),
    "data file not UTF-8": (lambda f: _cls(f, data=f["latin1.csv"]),
                            "latin1.csv: not UTF-8: byte 0xe9 at offset 26 (line 2); the bytes look like Latin-1", ()),
    "header or data, weak evidence": (lambda f: _cls(f, data=f["weak_header.tsv"]),
                                      "weak_header.tsv: is the first row ['Happy birthday mom', 'joy'] a header or "
                                      "data?", ()),
    "eval file of training rows": (lambda f: _cls(f, data=f["copied_eval"], n_train=None, n_eval=None),
                                   "copied_eval: 48 of 48 eval texts (100.0%) are also training texts", ()),
    "causal_lm corpus empty": (lambda f: _lm(f, data=f["empty.txt"]), "empty.txt is empty", ()),
    # ------------------------------------------------------------------ labels
    "3 classes for a 2-label teacher": (lambda f: _cls(f, teacher=f["two_label_classifier"], data=f["three.csv"]),
                                        "is a classifier trained for 2 labels, but the data", ()),
    "3 classes for the fine-tuned 2-label teacher": (lambda f: _cls(f, data=f["three.csv"], output=f["trained_out"]),
                                                     "the fine-tuned teacher in {root}/trained_out/teacher has 2 "
                                                     "labels", ()),
    "negative labels": (lambda f: _cls(f, data=f["negative.csv"]), "negative labels {-1}", ()),
    "a single class": (lambda f: _cls(f, data=f["one_class.csv"]), "has a single class", ()),
    "too few examples for the quiz split": (lambda f: _cls(f, n_train=1), "too few to carve a quiz split", ()),
    # ------------------------------------------------------------------ vocabularies (causal_lm)
    "tokenizers disagree": (lambda f: _lm(f, student=f["lm_other_vocab"]),
                            "teacher and student tokenizers disagree", ()),
    "student vocabulary larger, truncate_vocab off": (lambda f: _lm(f, student=f["lm_bigger_vocab"]),
                                                      "Set truncate_vocab: true", ()),
    # ------------------------------------------------------------------ values out of range
    "temperature -1": (lambda f: _cls(f, distill="{temperature: -1, max_steps: 1}"),
                       "temperature must be a positive number, got -1", ()),
    "batch_size 0": (lambda f: _cls(f, distill="{batch_size: 0}"), "batch_size must be a positive integer, got 0", ()),
    "n_train 0": (lambda f: _cls(f, n_train=0), "n_train must be a positive integer or null, got 0", ()),
    "teacher_bits 3": (lambda f: _cls(f, teacher_bits=3), "teacher_bits must be 4, 8 or null, got 3", ()),
    "compress.bits 12": (lambda f: _cls(f, "compress: {bits: 12}\n"), "compress.bits must be an integer from 2 to 8", ()),
    "finetune.lr negative": (lambda f: _cls(f, "finetune: {lr: -1}\n"), "finetune.lr must be a positive number", ()),
    "feature_layers not a mapping": (lambda f: _cls(f, distill="{feature_layers: [1, 2], feature_weight: 1}"),
                                     "feature_layers must map student layers to teacher layers", ()),
    "max_length beyond the teacher's positions": (
        lambda f: _cls(f, data=f["long.csv"], distill="{max_length: 1000, max_steps: 1, progress: false}"),
        "distill.max_length 1000 exceeds the teacher's 512 positions", ()),
    # ------------------------------------------------------------------ typos
    "top-level typo": (lambda f: _cls(f, studnet='"first:1"'), "unknown run config key 'studnet'; did you mean "
                                                               "'student'?", ()),
    "distill typo": (lambda f: _cls(f, distill="{temprature: 2}"), "did you mean 'temperature'?", ()),
    "compress typo": (lambda f: _cls(f, "compress: {sparsty: 0.5}\n"), "unknown compress key 'sparsty'; did you "
                                                                        "mean 'sparsity'?", ()),
    "finetune typo": (lambda f: _cls(f, "finetune: {epoch: 1}\n"), "unknown finetune key 'epoch'; did you mean "
                                                                    "'epochs'?", ()),
    "--set typo": (lambda f: _cls(f), "did you mean 'temperature'?", ("--set", "distill.temprature=2")),
    "data name typo": (lambda f: _cls(f, data="glue/sst3"), "did you mean 'glue/sst2'?", ()),
    # ------------------------------------------------------------------ the run file itself
    "YAML syntax error": (lambda f: _cls(f, "extra: [1, 2\nmore: 3\n"),
                          "bad.yaml, line 9, column 5: invalid YAML (expected ',' or ']'", ()),
    "YAML tab indentation": (lambda f: _cls(f, "\tindented: 1\n"), "bad.yaml, line 8, column 1: invalid YAML", ()),
    "run file is a list": (lambda f: "- teacher: embedded\n- student: first:1\n",
                           "expected a mapping of run config keys (key: value lines), found a list", ()),
    "--set value not YAML": (lambda f: _cls(f), "override 'distill.max_steps=[1': the value: invalid YAML",
                             ("--set", "distill.max_steps=[1")),
}


# Variants of a checked category run through metakd.cli.main in this process: the same code path
# (argparse, the run file, the checks, the error guard) without ~3 s of importing torch per case.
IN_PROCESS = {"student layers: not integers", "data file of blank lines", "jsonl without a label column",
              "data file not UTF-8", "header or data, weak evidence", "eval file of training rows",
              "finetune.lr negative", "feature_layers not a mapping", "finetune typo", "--set typo", "data name typo",
              "YAML tab indentation", "--set value not YAML"}


def _in_process(args, root: Path, capsys, monkeypatch):
    from metakd.cli import main

    monkeypatch.setenv("METAKD_CACHE", str(root / "cache"))
    capsys.readouterr()
    start = time.perf_counter()
    code = main(list(args))  # anything but a one-line user error raises here and fails the test
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err), time.perf_counter() - start


def _metakd(args, root: Path, env_extra: dict | None = None):
    env = dict(os.environ, METAKD_CACHE=str(root / "cache"), OMP_NUM_THREADS="1", **(env_extra or {}))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "metakd", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    return proc, time.perf_counter() - start


READ_REPORT = re.compile(r"read [\d,]+ (rows|lines) from ")


def _the_error_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # the report of the files read ("read N rows from FILE: header decision") may come first
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not READ_REPORT.match(line)]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines[0].startswith("metakd: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_in_one_line_before_any_work(case, files, capsys, monkeypatch):
    make, phrase, args = CASES[case]
    out = files["root"] / "out"
    shutil.rmtree(out, ignore_errors=True)  # what an earlier case may have left
    run = files["root"] / "bad.yaml"
    run.write_text(make(files))
    command = ["distill", str(run), *args]
    if case in IN_PROCESS:
        proc, seconds = _in_process(command, files["root"], capsys, monkeypatch)
    else:
        proc, seconds = _metakd(command, files["root"])
    line = _the_error_line(proc)
    assert phrase.replace("{root}", str(files["root"])) in line, line
    assert not (out / "teacher").exists() and not (out / "distilled").exists()  # nothing fine-tuned or distilled
    assert not (files["trained_out"] / "distilled").exists()
    assert seconds < 40, f"{case}: {seconds:.0f} s"  # no hub retry loop (that alone takes ~50 s)


def test_run_file_missing(tmp_path):
    path = tmp_path / "does_not_exist.yaml"
    proc, _ = _metakd(["distill", str(path)], tmp_path)
    assert f"run config not found: {path}" in _the_error_line(proc)


def test_run_file_is_a_directory(tmp_path, capsys, monkeypatch):
    proc, _ = _in_process(["finetune-teacher", str(tmp_path)], tmp_path, capsys, monkeypatch)
    assert f"run config {tmp_path} is a directory; name a YAML run file" in _the_error_line(proc)


def test_finetune_teacher_checks_first(files, tmp_path):
    run = tmp_path / "ft.yaml"
    run.write_text(_lm(files, teacher='"new:gpt3"', output=tmp_path / "out"))
    proc, _ = _metakd(["finetune-teacher", str(run)], tmp_path)
    assert "ARCH is one of gpt2, llama" in _the_error_line(proc)
    assert not (tmp_path / "out").exists()


def test_hub_offline_mode_fails_without_asking_the_hub(files, tmp_path):
    run = tmp_path / "offline.yaml"
    run.write_text(_cls(files, teacher="no-such-org/no-such-model-xyz", output=tmp_path / "out"))
    proc, _ = _metakd(["distill", str(run)], tmp_path, {"HF_HUB_OFFLINE": "1"})
    line = _the_error_line(proc)
    assert "neither a local directory nor reachable on the Hugging Face hub (offline?" in line
    assert "HF_HUB_OFFLINE" in line


def test_debug_shows_the_traceback(files, tmp_path):
    run = tmp_path / "typo.yaml"
    run.write_text(_cls(files, studnet="x", output=tmp_path / "out"))
    proc, _ = _metakd(["distill", str(run), "--debug"], tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError: unknown run config key 'studnet'" in proc.stderr


# ---------------------------------------------------------------------------- the checks, in process
def test_model_source_checks(monkeypatch, tmp_path):
    from metakd.models import ModelError, check_model_source

    calls = []

    def status(repo_id, repo_type="model", timeout=10.0):
        calls.append((repo_id, repo_type))
        return status.result

    monkeypatch.setattr("metakd.data.hub.hub_status", status)
    status.result = ("missing", "404")
    with pytest.raises(ModelError, match="neither a local directory nor a model on the Hugging Face hub"):
        check_model_source("org/typo-model", "teacher")
    status.result = ("unreachable", "ConnectError: no route")
    with pytest.raises(ModelError, match=r"nor reachable on the Hugging Face hub \(offline\?.*no route"):
        check_model_source("org/model", "student")
    for ok in ("cached", "reachable"):
        status.result = (ok, "")
        check_model_source("org/model")
    assert calls == [("org/typo-model", "model")] + [("org/model", "model")] * 3
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(ModelError, match="is a file"):
        check_model_source(tmp_path / "weights.bin")
    with pytest.raises(ModelError, match="no such directory"):
        check_model_source(tmp_path / "missing")
    with pytest.raises(ModelError, match="not shaped like a Hugging Face hub id"):
        check_model_source("two words")
    assert len(calls) == 4  # none of these asked the hub


def test_hub_data_set_checked_before_loading(monkeypatch):
    datasets = pytest.importorskip("datasets")
    from metakd.data import DataError, load_task

    loads = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: loads.append(a))
    monkeypatch.setattr("metakd.data.hub.hub_status", lambda repo_id, repo_type="model", timeout=10.0:
                        ("missing", "") if "typo" in repo_id else ("offline", "HF_HUB_OFFLINE is set"))
    with pytest.raises(DataError, match="there is no hub dataset 'org/typo' on the Hugging Face hub"):
        load_task("hub:org/typo")
    with pytest.raises(DataError, match=r"not in the local cache and the Hugging Face hub is switched off"):
        load_task("glue/sst2")
    assert loads == []  # load_dataset (and its retries) never ran


def test_is_hub_id():
    from metakd.data.hub import is_hub_id

    for name in ("gpt2", "openai-community/gpt2", "meta-llama/Meta-Llama-3-8B", "org/model.v2_x"):
        assert is_hub_id(name), name
    for name in ("/abs/dir", "./rel", "a/b/c", "two words", "-x", "x.", "a--b", "a..b", "first:1", ""):
        assert not is_hub_id(name), name
