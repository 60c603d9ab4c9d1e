"""4-bit (NF4, FP4) and 8-bit teachers through bitsandbytes, on CPU: the LoRA meta-update moves the
adapters and leaves the quantized base bit-identical, a full meta-update is refused, the meta-gradient
stays close to the unquantized teacher's, and the quantized teacher is smaller."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes", reason="quantized teachers need bitsandbytes: pip install 'metakd[quant]'")

from metakd import DistillConfig, MetaDistiller  # noqa: E402
from metakd.models import LORA_MARKER, ModelError, attach_lora, tiny_classifier  # noqa: E402
from metakd.quantization import (BLOCKSIZE_4BIT, check_meta_update, full_precision_layers,  # noqa: E402
                                 is_quantized, keep_differentiable, load_quantized, quantization_config, quantize,
                                 teacher_memory_bytes)

from .conftest import make_batch  # noqa: E402

QUANTS = {"nf4": (4, "nf4"), "fp4": (4, "fp4"), "int8": (8, "nf4")}
BACKENDS = ["higher", "jvp", "finite_diff"]
# The LoRA meta-gradient of a quantized teacher against the same teacher in fp32 (same adapters, same
# batches), measured on these tiny models (teacher width 64) over seeds 0-9, both architectures and all
# three backends (60 runs per format, bitsandbytes 0.50.2, AVX512-BF16 CPU): lowest cosine similarity
# nf4 0.9765, fp4 0.9470, int8 0.9998; largest relative L2 error nf4 0.216, fp4 0.343, int8 0.0224.
# The thresholds leave a margin beyond those.
MIN_COSINE = {"nf4": 0.96, "fp4": 0.93, "int8": 0.9995}
MAX_REL_ERROR = {"nf4": 0.30, "fp4": 0.45, "int8": 0.035}


def _teacher(arch: str, hidden: int = 64, seed: int = 1):
    """Width 64: one 4-bit block (BLOCKSIZE_4BIT) per row, so every Linear layer is quantized on every CPU."""
    return tiny_classifier(arch, num_layers=2, hidden_size=hidden, num_heads=2, seed=seed)


def _student(arch: str, hidden: int = 32, seed: int = 2):
    return tiny_classifier(arch, num_layers=1, hidden_size=hidden, num_heads=2, seed=seed)


def _base_snapshot(model) -> dict[str, torch.Tensor]:
    """Every non-adapter parameter and buffer as stored, plus bitsandbytes' quantization constants."""
    snap = {}
    for name, p in model.named_parameters():
        if LORA_MARKER in name:
            continue
        snap[name] = p.detach().clone()
        state = getattr(p, "quant_state", None)
        if state is not None:
            snap[name + ".absmax"] = state.absmax.clone()
    for name, module in model.named_modules():  # 8-bit row scales: on the weight, then (after a forward) the state
        if isinstance(module, bnb.nn.Linear8bitLt):
            scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
            snap[name + ".SCB"] = scb.clone()
    snap.update({n: b.clone() for n, b in model.named_buffers()})
    return snap


def _adapters(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if LORA_MARKER in n}


# ---------------------------------------------------------------------------- the meta-step
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("quant", list(QUANTS))
def test_lora_meta_step_on_quantized_teacher(arch, quant, backend):
    bits, quant_type = QUANTS[quant]
    teacher = quantize(_teacher(arch), bits, quant_type, device="cpu")
    assert is_quantized(teacher)
    cfg = DistillConfig(meta_update="lora", meta_grad=backend, teacher_lr=1e-2, student_lr=1e-2, pilot_lr=0.5,
                        progress=False)
    d = MetaDistiller(teacher, _student(arch), cfg)
    base, adapters = _base_snapshot(d.teacher), _adapters(d.teacher)
    assert adapters and any(".weight" in n and p.dtype in (torch.uint8, torch.int8) for n, p in base.items())
    for i in range(2):
        metrics = d.step(make_batch(2 * i), make_batch(2 * i + 1))
        for key in ("inner_loss", "quiz_loss", "student_loss", "teacher_grad_norm"):
            assert torch.isfinite(torch.tensor(metrics[key])), f"{key} = {metrics[key]}"
        assert metrics["teacher_grad_norm"] > 0
    after = _base_snapshot(d.teacher)
    assert after.keys() == base.keys()
    for name, value in base.items():
        assert torch.equal(after[name], value), f"quantized base {name} changed"
    moved = [n for n, p in _adapters(d.teacher).items() if not torch.equal(p, adapters[n])]
    assert any("lora_A" in n for n in moved) and any("lora_B" in n for n in moved), moved


def test_full_meta_update_is_refused_before_any_work():
    teacher = quantize(_teacher("bert"), 4, "nf4", device="cpu")
    student = _student("bert")
    flags = [p.requires_grad for p in teacher.parameters()]
    with pytest.raises(ModelError, match=r"meta_update='full'.*quantized.*meta_update='lora'"):
        MetaDistiller(teacher, student, DistillConfig(meta_update="full", progress=False))
    assert [p.requires_grad for p in teacher.parameters()] == flags  # nothing was touched
    assert not any(LORA_MARKER in n for n, _ in teacher.named_parameters())


def test_check_meta_update_sees_through_peft_and_allows_lora_and_none():
    wrapped = attach_lora(quantize(_teacher("gpt2"), 8, device="cpu"), 4, 8, 0.0, None)
    assert is_quantized(wrapped)
    with pytest.raises(ModelError, match="meta_update='lora'"):
        check_meta_update(wrapped, "full")
    check_meta_update(wrapped, "lora")
    check_meta_update(wrapped, "none")
    fp32 = _teacher("bert")
    assert not is_quantized(fp32)
    check_meta_update(fp32, "full")


# ---------------------------------------------------------------------------- agreement with fp32
def meta_gradient_cosine(arch: str, quant: str, backend: str, seed: int) -> tuple[float, float]:
    """Cosine similarity and relative L2 error of the LoRA meta-gradient of a quantized teacher against
    the same teacher in fp32: same adapters (copied; lora_B made non-zero so that lora_A's gradient is
    non-zero too), same student, same batches."""
    bits, quant_type = QUANTS[quant]
    fp32 = _teacher(arch, seed=seed)
    student = _student(arch, seed=seed + 100)
    cfg = DistillConfig(meta_update="lora", meta_grad=backend, pilot_lr=0.5, progress=False)
    d32 = MetaDistiller(copy.deepcopy(fp32), copy.deepcopy(student), cfg)
    dq = MetaDistiller(quantize(fp32, bits, quant_type, device="cpu"), copy.deepcopy(student), cfg)
    g = torch.Generator().manual_seed(seed)
    reference = dict(d32.teacher.named_parameters())
    with torch.no_grad():
        for name, p in dq.teacher.named_parameters():
            if LORA_MARKER in name:
                if "lora_B" in name:
                    reference[name].copy_(0.1 * torch.randn(p.shape, generator=g))
                p.copy_(reference[name])
    batch, quiz = make_batch(10 * seed), make_batch(10 * seed + 1)
    want = torch.cat([x.reshape(-1) for x in d32.meta_gradient(batch, quiz).phi_grads])
    got = torch.cat([x.reshape(-1) for x in dq.meta_gradient(batch, quiz).phi_grads])
    cos = float(torch.nn.functional.cosine_similarity(got, want, dim=0))
    return cos, float((got - want).norm() / want.norm())


@pytest.mark.parametrize("quant", list(QUANTS))
def test_meta_gradient_agrees_with_fp32_teacher(arch, quant, capsys):
    for backend in BACKENDS:
        cos, rel = meta_gradient_cosine(arch, quant, backend, seed=0)
        with capsys.disabled():
            print(f"\n{arch} {quant} {backend}: cosine {cos:.4f}, relative error {rel:.3f}", end="")
        assert cos > MIN_COSINE[quant], f"{arch} {quant} {backend}: cosine {cos:.4f}"
        assert rel < MAX_REL_ERROR[quant], f"{arch} {quant} {backend}: relative error {rel:.3f}"


# ---------------------------------------------------------------------------- layers narrower than a 4-bit block
def _one_narrow_layer():
    """A 1-block BERT of width 64 whose FFN is 32 wide: only ``output.dense`` (in_features 32) is
    narrower than one 4-bit block."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=64, num_labels=2, pad_token_id=0)
    return BertForSequenceClassification(cfg).eval()


NARROW = "bert.encoder.layer.0.output.dense"


def _check_narrow(model, fp32, caplog):
    assert BLOCKSIZE_4BIT == bnb.nn.Params4bit(torch.zeros(64, 64)).blocksize  # bitsandbytes' default
    assert model.metakd_full_precision == {NARROW: f"in_features 32 < 4-bit blocksize {BLOCKSIZE_4BIT}"}
    assert any(NARROW in r.getMessage() and "full precision" in r.getMessage() for r in caplog.records)
    narrow = model.get_submodule(NARROW)
    assert type(narrow) is torch.nn.Linear and torch.equal(narrow.weight, fp32.get_submodule(NARROW).weight)
    assert isinstance(model.get_submodule("bert.encoder.layer.0.intermediate.dense"), bnb.nn.Linear4bit)
    ids = make_batch(0, vocab=64)["input_ids"]
    with torch.no_grad():  # eval mode, no grad: the AVX512-BF16 CPU kernel repacks the 4-bit weights here
        diff = (model(input_ids=ids).logits - fp32(input_ids=ids).logits).abs().max()
    assert diff < 0.1


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_quantize_keeps_a_narrow_layer_in_full_precision(quant_type, caplog, tmp_path):
    from metakd.compress import load_compressed, save_compressed

    fp32 = _one_narrow_layer()
    assert full_precision_layers(fp32, 8) == {}  # 8-bit has no blocks
    with caplog.at_level("WARNING", logger="metakd.quantization"):
        q = quantize(fp32, 4, quant_type, device="cpu").eval()
    _check_narrow(q, fp32, caplog)
    saved = save_compressed(q, tmp_path / "q", method="bnb4", info={"full_precision_layers": q.metakd_full_precision})
    loaded = load_compressed(saved).eval()  # the skip list travels in config.json
    assert loaded.metakd_full_precision == q.metakd_full_precision
    assert type(loaded.get_submodule(NARROW)) is torch.nn.Linear
    ids = make_batch(0, vocab=64)["input_ids"]
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, q(input_ids=ids).logits, atol=1e-6)


def test_load_quantized_keeps_a_narrow_layer_in_full_precision(tmp_path, caplog):
    fp32 = _one_narrow_layer()
    fp32.save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="metakd.quantization"):
        model = load_quantized(tmp_path, 4, "nf4", num_labels=2, device="cpu").eval()
    _check_narrow(model, fp32, caplog)


def test_no_grad_forward_does_not_cut_the_meta_gradient(caplog):
    """On an AVX512-BF16 CPU, a no-grad eval-mode forward repacks bitsandbytes' 4-bit weights for a kernel
    without a backward; the meta-gradient must be the same as without such a forward, whether it ran
    before MetaDistiller was built or after (as pilot="restore" and evaluations do)."""
    teacher = quantize(_teacher("bert"), 4, "nf4", device="cpu").eval()
    student = _student("bert")
    cfg = DistillConfig(meta_update="lora", meta_grad="jvp", pilot_lr=0.5, progress=False)
    batch, quiz = make_batch(0), make_batch(1)

    def meta_grad(model, forward_before: bool, forward_after: bool) -> list[torch.Tensor]:
        if forward_before:
            with torch.no_grad():
                model(input_ids=batch["input_ids"])
        d = MetaDistiller(model, copy.deepcopy(student), cfg)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in d.teacher.named_parameters():
                if "lora_B" in name:  # non-zero, so that lora_A's meta-gradient (through the layers above) is too
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            if forward_after:
                d.teacher(input_ids=batch["input_ids"])
        return [x for x in d.meta_gradient(batch, quiz).phi_grads if x is not None]

    reference = meta_grad(copy.deepcopy(teacher), False, False)
    assert reference and all(x.abs().sum() > 0 for x in reference)
    after = meta_grad(copy.deepcopy(teacher), False, True)  # MetaDistiller switched the repacking off: exact
    assert len(after) == len(reference) and all(torch.equal(x, y) for x, y in zip(after, reference))
    packed = any(getattr(m, "support_avx512bf16_for_cpu", False) for m in teacher.modules())
    with caplog.at_level("WARNING", logger="metakd.quantization"):
        before = meta_grad(copy.deepcopy(teacher), True, False)  # unpacked again, absmax rounded to bf16 on the way
    assert len(before) == len(reference)
    for x, y in zip(before, reference):  # measured: at most 1.0e-2 relative (L2) on this AVX512-BF16 CPU
        assert float((x - y).norm() / y.norm()) < 0.05
    assert packed == any("bf16" in r.getMessage() for r in caplog.records)
    assert keep_differentiable(_teacher("bert")) == 0  # nothing to switch in a full-precision model


# ---------------------------------------------------------------------------- memory, loading, errors
def test_memory_4bit_below_8bit_below_fp32():
    fp32 = _teacher("bert", hidden=256)  # 2 blocks of 256-wide Linear layers: ~1M weights
    sizes = {"fp32": teacher_memory_bytes(fp32)}
    for quant, (bits, quant_type) in QUANTS.items():
        sizes[quant] = teacher_memory_bytes(quantize(fp32, bits, quant_type, device="cpu"))
    assert sizes["nf4"] == sizes["fp4"] < sizes["int8"] < sizes["fp32"]
    assert sizes["nf4"] < 0.25 * sizes["fp32"] and sizes["int8"] < 0.4 * sizes["fp32"], sizes
    bf16 = teacher_memory_bytes(copy.deepcopy(fp32).to(torch.bfloat16))
    assert bf16 == pytest.approx(sizes["fp32"] / 2, rel=1e-3)  # all but the int64 position-id buffers halve


def test_load_quantized_classifier_from_a_directory(tmp_path):
    fp32 = _teacher("bert", hidden=64)
    fp32.save_pretrained(tmp_path)
    model = load_quantized(tmp_path, 4, "nf4", num_labels=2, device="cpu")
    assert is_quantized(model) and model.is_loaded_in_4bit
    assert type(model.classifier) is torch.nn.Linear and model.classifier.weight.dtype == torch.float32
    ids = make_batch(0, vocab=64)["input_ids"]
    with torch.no_grad():
        diff = (model(input_ids=ids).logits - fp32(input_ids=ids).logits).abs().max()
    assert diff < 0.1


def test_load_quantized_causal_lm(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)).save_pretrained(tmp_path)
    model = load_quantized(tmp_path, 8, kind="causal_lm", device="cpu")
    assert is_quantized(model) and model.is_loaded_in_8bit
    assert type(model.lm_head) is torch.nn.Linear
    with torch.no_grad():
        assert model(input_ids=torch.randint(0, 64, (2, 5))).logits.shape == (2, 5, 64)


@pytest.mark.parametrize("kwargs, message", [
    (dict(bits=3), "bits must be 4 or 8"),
    (dict(bits=True), "bits must be 4 or 8"),
    (dict(bits=4, quant_type="int4"), "quant_type must be 'nf4' or 'fp4'"),
    (dict(bits=4, compute_dtype=torch.int8), "compute_dtype"),
])
def test_bad_quantization_settings(kwargs, message):
    with pytest.raises(ModelError, match=message):
        quantization_config(**kwargs)


def test_bad_kind(tmp_path):
    with pytest.raises(ModelError, match="kind must be"):
        load_quantized(tmp_path, 4, kind="seq2seq")


def test_missing_bitsandbytes_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes now raises ImportError
    with pytest.raises(ModelError, match=r"pip install 'metakd\[quant\]'"):
        quantization_config(4)


# ---------------------------------------------------------------------------- the benchmark, end to end
@pytest.mark.slow
def test_bench_quantized_teacher_quick(tmp_path):
    """The CLI path end to end (one worker process per variant; nf4 against the fp32 reference)."""
    import json

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "metakd", "bench", "quantized-teacher", "--quick", "--steps", "1",
                           "--variants", "nf4", "--out", str(tmp_path)], cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "quantized_teacher.json").read_text())
    rows = {r["variant"]: r for r in payload["results"]}
    assert set(rows) == {"fp32", "nf4"}
    assert all(r["finite"] and r["same_adapter_init"] for r in rows.values())
    assert rows["nf4"]["linear_bytes"] < 0.2 * rows["fp32"]["linear_bytes"]
    assert rows["nf4"]["weight_bytes"] < rows["fp32"]["weight_bytes"]
    assert rows["fp32"]["grad_cosine"] == pytest.approx(1.0) and rows["fp32"]["logits_max_abs_diff"] == 0.0
    assert rows["nf4"]["grad_cosine"] > MIN_COSINE["nf4"]
    assert "| nf4" in (tmp_path / "quantized_teacher.md").read_text()
    assert (tmp_path / "quantized_teacher.png").is_file()


def test_student_cannot_be_cut_from_a_quantized_teacher():
    from metakd.models import student_from_teacher

    teacher = quantize(_teacher("bert"), 4, "nf4", device="cpu")
    with pytest.raises(ModelError, match="full-precision teacher"):
        student_from_teacher(teacher, "first:1")


def test_load_quantized_draws_a_fresh_head_from_the_seed(tmp_path):
    _teacher("bert", hidden=64).bert.save_pretrained(tmp_path)  # the encoder alone: no classification head
    torch.manual_seed(7)
    before = torch.get_rng_state()
    heads = [load_quantized(tmp_path, 8, num_labels=2, device="cpu", seed=s).classifier.weight.detach().clone()
             for s in (0, 0, 1)]
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])
    assert torch.equal(torch.get_rng_state(), before)
