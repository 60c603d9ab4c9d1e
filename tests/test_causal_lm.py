"""Causal-LM distillation: the token-level loss, its chunking, vocabulary checks, the meta-gradient
of every backend against an independent reference, evaluation, and a run end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from metakd import DistillConfig, MetaDistiller
from metakd.evaluate import evaluate_lm, generation_speed
from metakd.losses import next_token_ce, token_kd_loss
from metakd.models import ModelError, tiny_causal_lm, tiny_classifier
from metakd.vocab import check_tokenizers, output_vocab_size, shared_vocab_size

VOCAB = 64


def lm_batch(seed: int, batch: int = 4, length: int = 10, vocab: int = VOCAB, pad_rows: int = 2, pad: int = 3):
    """Right-padded LM blocks: labels are the ids, -100 on padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[:pad_rows, length - pad:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def lm_items(n: int, seed: int = 0, length: int = 10):
    b = lm_batch(seed, batch=n, length=length, pad_rows=n // 3)
    return [{k: v[i] for k, v in b.items()} for i in range(n)]


# ---------------------------------------------------------------------------- the loss
def reference_token_loss(s, t, labels, mask, T, alpha):
    """Forward KL per real position (times T²) and next-token CE, written from the definition."""
    m = mask.bool()
    p_t = F.softmax(t[m] / T, -1)
    kl = (p_t * (F.log_softmax(t[m] / T, -1) - F.log_softmax(s[m] / T, -1))).sum(-1).mean()
    ce = F.cross_entropy(s[:, :-1].reshape(-1, s.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    return alpha * T * T * kl + (1 - alpha) * ce


@settings(max_examples=25, deadline=None)
@given(chunk=st.one_of(st.none(), st.integers(1, 50)), alpha=st.floats(0.05, 1.0), T=st.floats(0.5, 4.0),
       seed=st.integers(0, 1000))
def test_token_kd_loss_matches_reference_for_any_chunking(chunk, alpha, T, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(3, 7, 11, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 7, 11, generator=g, dtype=torch.float64, requires_grad=True)
    batch = lm_batch(seed, batch=3, length=7, vocab=11, pad_rows=2, pad=2)
    got = token_kd_loss(s, t, batch["labels"], T, alpha, mask=batch["attention_mask"], chunk_size=chunk)
    want = reference_token_loss(s, t, batch["labels"], batch["attention_mask"], T, alpha)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # gradients to both sides, including through the checkpointed chunks, and a double backward
    gs, gt = torch.autograd.grad(got, (s, t), create_graph=True)
    ws, wt = torch.autograd.grad(want, (s, t), create_graph=True)
    torch.testing.assert_close(gs, ws, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gt, wt, rtol=1e-9, atol=1e-12)
    v = torch.randn(s.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad((gs * v).sum(), t)[0], torch.autograd.grad((ws * v).sum(), t)[0],
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_padding_positions_do_not_count(divergence):
    batch = lm_batch(0)
    s, t = torch.randn(4, 10, VOCAB), torch.randn(4, 10, VOCAB)
    base = token_kd_loss(s, t, batch["labels"], 2.0, 0.5, divergence, mask=batch["attention_mask"], chunk_size=7)
    s2, t2 = s.clone(), t.clone()
    pad = batch["attention_mask"] == 0
    s2[pad], t2[pad] = torch.randn(int(pad.sum()), VOCAB) * 5, torch.randn(int(pad.sum()), VOCAB) * 5
    again = token_kd_loss(s2, t2, batch["labels"], 2.0, 0.5, divergence, mask=batch["attention_mask"], chunk_size=7)
    torch.testing.assert_close(base, again)
    # ... while changing a real position does change it
    s2[~pad] += torch.randn(int((~pad).sum()), VOCAB)
    assert not torch.allclose(base, token_kd_loss(s2, t2, batch["labels"], 2.0, 0.5, divergence,
                                                  mask=batch["attention_mask"], chunk_size=7))


def test_next_token_ce_is_shifted_cross_entropy():
    batch = lm_batch(1)
    logits = torch.randn(4, 10, VOCAB)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(next_token_ce(logits, batch["labels"], chunk_size=3), want)


def _saved_bytes(fn) -> int:
    total = 0

    def pack(x):
        nonlocal total
        total += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return total


def test_chunking_keeps_no_full_size_intermediates_for_backward():
    """What the loss saves for its backward: unchunked, several [B·L, V] tensors (softmaxes and
    their products); chunked, about the two logits tensors' worth."""
    batch = lm_batch(2, batch=8, length=32)
    s = torch.randn(8, 32, 512, requires_grad=True)
    t = torch.randn(8, 32, 512, requires_grad=True)
    logits_bytes = s.numel() * s.element_size()

    def loss(chunk):
        return lambda: token_kd_loss(s, t, batch["labels"], 2.0, 0.5, mask=batch["attention_mask"], chunk_size=chunk)

    whole, chunked = _saved_bytes(loss(None)), _saved_bytes(loss(16))
    assert whole > 3 * logits_bytes
    assert chunked < 2.2 * logits_bytes
    assert chunked < whole / 2


def _backward_allocated_bytes(loss) -> int:
    """Bytes the CPU allocator handed out during ``loss.backward()`` (torch.profiler's memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_chunk_gradients_are_chunk_sized(divergence):
    """The chunks are views from one torch.split: the loss and its gradients to both logits tensors equal
    the unchunked ones, and the backward allocates the same whatever the number of chunks. Slicing each
    chunk (s_flat[a:b]) allocated a zero-filled [B·L, V] gradient per chunk and logits tensor (measured
    here: 26 logits tensors' worth at 4 chunks, 50 at 16; with split, 20 at both)."""
    batch = lm_batch(3, batch=8, length=32)
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(8, 32, 512, generator=g), torch.randn(8, 32, 512, generator=g))
    results = {}
    for chunk in (None, 64, 16):  # 1, 4 and 16 chunks of the 256 positions
        s, t = (x.clone().requires_grad_() for x in base)
        loss = token_kd_loss(s, t, batch["labels"], 2.0, 0.5, divergence, mask=batch["attention_mask"],
                             chunk_size=chunk)
        if chunk:
            names, seen, stack = set(), set(), [loss.grad_fn]
            while stack:  # every node of the autograd graph (checkpointed chunks: the outer graph)
                node = stack.pop()
                if node is not None and id(node) not in seen:
                    seen.add(id(node))
                    names.add(type(node).__name__)
                    stack.extend(f for f, _ in node.next_functions)
            assert "SliceBackward0" not in names and any(n.startswith("Split") for n in names), names
        results[chunk] = (loss.detach(), _backward_allocated_bytes(loss), s.grad, t.grad)
    whole = results[None]
    for chunk in (64, 16):
        torch.testing.assert_close(results[chunk][0], whole[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(results[chunk][2], whole[2], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(results[chunk][3], whole[3], rtol=1e-5, atol=1e-8)
    logits_bytes = base[0].numel() * base[0].element_size()
    assert abs(results[16][1] - results[64][1]) < logits_bytes, (results[16][1], results[64][1])


def test_token_kd_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shared vocabulary"):
        token_kd_loss(torch.zeros(2, 3, 5), torch.zeros(2, 3, 6), torch.zeros(2, 3, dtype=torch.long), 1.0, 0.5)
    with pytest.raises(ValueError, match=r"\[B, L, V\]"):
        token_kd_loss(torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), 1.0, 0.5)


# ---------------------------------------------------------------------------- vocabularies
def test_vocab_mismatch_is_refused_with_a_clear_error():
    teacher, student = tiny_causal_lm("gpt2", vocab_size=64), tiny_causal_lm("gpt2", vocab_size=60, seed=1)
    assert (output_vocab_size(teacher), output_vocab_size(student)) == (64, 60)
    with pytest.raises(ModelError, match="truncate_vocab"):
        MetaDistiller(teacher, student, DistillConfig(task="causal_lm", meta_update="none", progress=False))
    assert shared_vocab_size(teacher, student, truncate=True) == 60


def test_truncated_vocabulary_distils_over_the_shared_ids():
    teacher, student = tiny_causal_lm("gpt2", vocab_size=64), tiny_causal_lm("gpt2", vocab_size=60, seed=1)
    cfg = DistillConfig(task="causal_lm", meta_update="lora", meta_grad="jvp", truncate_vocab=True, batch_size=4,
                        max_steps=2, progress=False)
    d = MetaDistiller(teacher, student, cfg)
    assert d.objective.vocab_size == 60
    items = lm_items(12)
    for it in items:  # ids the student knows
        it["input_ids"] = it["input_ids"] % 60
        it["labels"] = torch.where(it["labels"] == -100, it["labels"], it["labels"] % 60)
    history = d.fit(items)
    assert len(history["train"]) == 2 and all(torch.isfinite(torch.tensor(h["student_loss"])) for h in history["train"])


class _Tok:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)


def test_check_tokenizers():
    base = {f"t{i}": i for i in range(10)}
    assert check_tokenizers(_Tok(base), _Tok(base)) == 10
    longer = dict(base, extra=10, more=11)
    with pytest.raises(ModelError, match="truncate_vocab"):
        check_tokenizers(_Tok(longer), _Tok(base))
    assert check_tokenizers(_Tok(longer), _Tok(base), truncate=True) == 10
    swapped = dict(base, t3=4, t4=3)
    with pytest.raises(ModelError, match="disagree on 2 of their first 10 ids"):
        check_tokenizers(_Tok(swapped), _Tok(base), truncate=True)


def test_classifiers_are_refused_for_causal_lm():
    with pytest.raises(ModelError, match="AutoModelForCausalLM"):
        MetaDistiller(tiny_classifier("bert"), tiny_causal_lm("gpt2"),
                      DistillConfig(task="causal_lm", meta_update="none", progress=False))


def test_classification_data_is_refused_for_causal_lm():
    from metakd.data import DataError

    d = MetaDistiller(tiny_causal_lm("gpt2"), tiny_causal_lm("gpt2", num_layers=1, seed=1),
                      DistillConfig(task="causal_lm", meta_update="none", progress=False))
    items = [{"input_ids": torch.tensor([1, 2, 3]), "attention_mask": torch.ones(3, dtype=torch.long),
              "labels": torch.tensor(1)}] * 4
    with pytest.raises(DataError, match="language-modelling blocks"):
        d.fit(items)


# ---------------------------------------------------------------------------- meta-gradient
def reference_lm_meta_gradient(teacher, student, batch, quiz, phi_names, *, T, alpha, lr):
    """∇_φ CE_next(S_θ'(x_q)) with θ' = θ − lr·∇_θ L_in(θ, z_T(φ)), from the definition."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    named = dict(teacher.named_parameters())
    phi = [named[n] for n in phi_names]
    t_logits = teacher(**inputs).logits
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in student.named_parameters()}
    s_logits = functional_call(student, theta, args=(), kwargs=inputs).logits
    loss = reference_token_loss(s_logits, t_logits, batch["labels"], batch["attention_mask"], T, alpha)
    grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
    theta = {n: p - lr * g for (n, p), g in zip(theta.items(), grads)}
    q = functional_call(student, theta, args=(), kwargs={k: quiz[k] for k in ("input_ids", "attention_mask")}).logits
    quiz_loss = F.cross_entropy(q[:, :-1].reshape(-1, q.shape[-1]), quiz["labels"][:, 1:].reshape(-1),
                                ignore_index=-100)
    return torch.autograd.grad(quiz_loss, phi)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("backend,tol", [("higher", 1e-6), ("jvp", 1e-6), ("finite_diff", 1e-4)])
def test_lm_meta_gradient_matches_reference(arch, mode, backend, tol):
    teacher = tiny_causal_lm(arch, num_layers=2, seed=1, dtype=torch.float64)
    student = tiny_causal_lm(arch, num_layers=1, seed=2, dtype=torch.float64)
    cfg = DistillConfig(task="causal_lm", meta_update=mode, meta_grad=backend, temperature=2.0, alpha=0.6,
                        pilot_lr=0.5, teacher_optimizer="sgd", teacher_lr=1.0, teacher_grad_clip=None,
                        lm_chunk_size=7, progress=False)
    d = MetaDistiller(teacher, student, cfg)
    if mode == "lora":  # lora_B starts at zero, which makes ∂/∂A vanish
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for n, p in d.teacher.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    batch, quiz = lm_batch(0), lm_batch(1)
    phi_names = [n for n, p in d.teacher.named_parameters() if p.requires_grad]
    want = reference_lm_meta_gradient(d.teacher, d.student, batch, quiz, phi_names, T=2.0, alpha=0.6, lr=0.5)
    before = [p.detach().clone() for p in d.phi]
    d.step(batch, quiz)
    moved = [a.detach() - b for a, b in zip(d.phi, before)]
    scale = max(float(w.abs().max()) for w in want)
    assert scale > 0
    err = max(float((m + w).abs().max()) for m, w in zip(moved, want)) / scale
    assert err <= tol, f"{backend}: relative error {err:.2e}"


# ---------------------------------------------------------------------------- evaluation and a full run
def test_evaluate_lm_perplexity_is_exp_of_token_weighted_loss():
    model = tiny_causal_lm("gpt2", seed=3)
    batches = [lm_batch(0), lm_batch(1, pad_rows=0)]
    scores = evaluate_lm(lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                         batches, chunk_size=5)
    with torch.no_grad():
        total, count, hits = 0.0, 0, 0
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            y = b["labels"][:, 1:].reshape(-1)
            total += float(F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), y, ignore_index=-100, reduction="sum"))
            count += int((y != -100).sum())
            guesses = logits[:, :-1].reshape(-1, VOCAB).argmax(-1)
            hits += sum(int(g) == int(t) for g, t in zip(guesses, y) if int(t) != -100)
    assert scores["tokens"] == count
    assert scores["next_token_accuracy"] == hits / count and 0 < hits < count
    assert scores["loss"] == pytest.approx(total / count, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(torch.tensor(total / count).exp().item(), rel=1e-5)
    assert scores["tokens_per_second"] > 0


def test_generation_speed_counts_new_tokens():
    model = tiny_causal_lm("gpt2", seed=3)
    out = generation_speed(model, torch.randint(1, VOCAB, (2, 5)), max_new_tokens=6)
    assert out["generated_tokens"] == 12 and out["generation_tokens_per_second"] > 0
    with pytest.raises(ValueError, match="prompts"):
        generation_speed(model, torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("student_lora", [False, True])
def test_causal_lm_distillation_end_to_end_with_save_and_reload(tmp_path, student_lora):
    from transformers import AutoModelForCausalLM

    teacher = tiny_causal_lm("gpt2", num_layers=2, seed=1)
    student = tiny_causal_lm("gpt2", num_layers=1, seed=2)
    cfg = DistillConfig(task="causal_lm", meta_update="lora", meta_grad="jvp", batch_size=4, max_steps=4,
                        student_lr=1e-2, lm_chunk_size=8, student_lora=student_lora, progress=False)
    d = MetaDistiller(teacher, student, cfg)
    lora_before = {n: p.detach().clone() for n, p in d.teacher.named_parameters() if p.requires_grad}
    history = d.fit(lm_items(24), eval_data=lm_items(8, seed=9))
    assert len(history["train"]) == 4
    assert any(h["meta"] for h in history["train"])
    ppl = history["eval"][-1]["perplexity"]
    assert 1.0 < ppl < 10 * VOCAB
    moved = [not torch.equal(p, lora_before[n]) for n, p in d.teacher.named_parameters() if p.requires_grad]
    assert any(moved)
    out = d.save(tmp_path / "run")
    reloaded = AutoModelForCausalLM.from_pretrained(str(out / "student"))
    batch = lm_batch(4)
    with torch.no_grad():
        d.student.eval()
        want = d.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (out / "teacher_adapters" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_bench_lm_chunking_quick_end_to_end(tmp_path):
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "metakd", "bench", "lm-chunking", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "lm_chunking.json").read_text())["results"]
    assert {(r["mode"], r["chunk"]) for r in results} == {("none", 0), ("none", 16), ("lora", 0), ("lora", 16)}
    assert all(r["median_step_seconds"] > 0 and r["step_memory_bytes"] > 0 for r in results)
    assert all(min(r["step_seconds"]) <= r["median_step_seconds"] <= max(r["step_seconds"]) for r in results)
    assert "| LoRA meta-update (jvp) | 16 |" in proc.stdout and "load average" in proc.stdout
