"""Structured pruning: pruned heads/neurons equal zeroing their output columns in the original,
weights really shrink, plans replay on a fresh model, importance and planning pick the right units."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from metakd.compress.structured import (SUPPORTED, apply_plan, head_neuron_importance, plan_pruning,
                                        prune_structured, structure_of)
from metakd.models import ModelError, find_layer_list, tiny_causal_lm, tiny_classifier

HIDDEN, HEADS, VOCAB = 32, 4, 64


def _llama_like(kind: str, kv_heads: int = HEADS, bias: bool = False):
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
               "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_cls, model_cls = classes[kind]
    extra = {"attention_bias": bias, "mlp_bias": bias} if kind == "llama" else {}
    cfg = config_cls(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
                     num_attention_heads=HEADS, num_key_value_heads=kv_heads, max_position_embeddings=64,
                     pad_token_id=0, bos_token_id=1, eos_token_id=VOCAB - 1, attention_dropout=0.0,
                     tie_word_embeddings=False, **extra)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return model_cls(cfg)


def _roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    cfg = RobertaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                        intermediate_size=2 * HIDDEN, max_position_embeddings=64, pad_token_id=0,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return RobertaForSequenceClassification(cfg)


BUILDERS = {
    "bert": lambda: tiny_classifier("bert", hidden_size=HIDDEN, num_heads=HEADS),
    "roberta": _roberta,
    "gpt2_cls": lambda: tiny_classifier("gpt2", hidden_size=HIDDEN, num_heads=HEADS),
    "gpt2_lm": lambda: tiny_causal_lm("gpt2", hidden_size=HIDDEN, num_heads=HEADS),
    "llama": lambda: tiny_causal_lm("llama", hidden_size=HIDDEN, num_heads=HEADS),
    "llama_gqa_bias": lambda: _llama_like("llama", kv_heads=2, bias=True),
    "mistral_gqa": lambda: _llama_like("mistral", kv_heads=2),
    "qwen2": lambda: _llama_like("qwen2"),
}


def build(name: str) -> nn.Module:
    return BUILDERS[name]().to(torch.float64).eval()


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(2, VOCAB - 1, (3, 7), generator=g)}


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs()).logits


def lm_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def scoring_batches(name: str) -> list[dict]:
    """Two labelled batches: class labels for classifiers, the inputs themselves for causal LMs."""
    classifier = name in ("bert", "roberta", "gpt2_cls")
    batches = [inputs(s) for s in (1, 2)]
    for b in batches:
        b["labels"] = torch.tensor([0, 1, 1]) if classifier else b["input_ids"].clone()
    return batches


def is_gqa(name: str) -> bool:
    return name in ("llama_gqa_bias", "mistral_gqa")


# ---------------------------------------------------------------------------- reference: zero output columns
def head_out(block: nn.Module) -> tuple[torch.Tensor, int]:
    """(weight of the attention-output projection, width of one unit along its input axis)."""
    if hasattr(block, "attention"):
        att = block.attention.self
        return block.attention.output.dense.weight, att.attention_head_size
    if hasattr(block, "attn"):
        return block.attn.c_proj.weight, block.attn.head_dim
    att = block.self_attn
    return att.o_proj.weight, att.head_dim * att.num_key_value_groups


def ffn_out(block: nn.Module) -> torch.Tensor:
    if hasattr(block, "output"):
        return block.output.dense.weight
    if hasattr(block, "mlp") and hasattr(block.mlp, "c_proj"):
        return block.mlp.c_proj.weight
    return block.mlp.down_proj.weight


def zero_units(model: nn.Module, block_idx: int, heads: list[int], neurons: list[int]) -> None:
    """Zero the output projection's input columns of these heads (KV groups) and the FFN-out input
    columns of these neurons (Linear: dim 1; GPT-2's Conv1D stores [in, out]: dim 0)."""
    block = find_layer_list(model)[1][block_idx]
    w, width = head_out(block)
    f = ffn_out(block)
    in_dim = 0 if type(block).__name__.startswith("GPT2") else 1
    with torch.no_grad():
        for h in heads:
            w.narrow(in_dim, h * width, width).zero_()
        for j in neurons:
            f.narrow(in_dim, j, 1).zero_()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(BUILDERS))
def test_pruning_equals_zeroing_output_columns(name):
    original = build(name)
    pruned = copy.deepcopy(original)
    base = logits(original)
    n_units, n_neurons = HEADS // (2 if is_gqa(name) else 1), structure_of(original)[0]["neurons"]
    cut0, cut1, cut_neurons = [n_units - 2], [u for u in range(n_units) if u != 0], [0, 5, n_neurons - 1]
    apply_plan(pruned, {0: {"heads": [u for u in range(n_units) if u not in cut0],
                            "neurons": [j for j in range(n_neurons) if j not in cut_neurons]},
                        1: {"heads": [0]}})
    zero_units(original, 0, cut0, cut_neurons)
    zero_units(original, 1, cut1, [])
    reference = logits(original)
    assert not torch.allclose(reference, base)  # the cut units mattered
    torch.testing.assert_close(logits(pruned), reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_parameter_count_drops_exactly_and_model_trains(name):
    model = build(name)
    before, shape = n_params(model), structure_of(model)
    rep = 2 if is_gqa(name) else 1
    hd = HIDDEN // HEADS
    llama_like = name.startswith(("llama", "mistral", "qwen2"))
    bias_qkv = not llama_like or name in ("qwen2", "llama_gqa_bias")
    bias_ffn = not llama_like or name == "llama_gqa_bias"
    n_ffn_in = 2 if llama_like else 1  # gate + up
    # one head (KV group: rep query heads, one key and one value head) in block 0, three neurons in block 1
    q_rows = rep * hd
    head_removed = (q_rows + 2 * hd) * (HIDDEN + bias_qkv) + q_rows * HIDDEN
    neuron_removed = 3 * (n_ffn_in * (HIDDEN + bias_ffn) + HIDDEN)
    n_units, n_neurons = shape[0]["heads"], shape[0]["neurons"]
    assert n_units == HEADS // rep
    apply_plan(model, {0: {"heads": list(range(1, n_units))}, 1: {"neurons": list(range(3, n_neurons))}})
    assert n_params(model) == before - head_removed - neuron_removed
    assert structure_of(model) == {0: {"heads": n_units - 1, "neurons": n_neurons},
                                   1: {"heads": n_units, "neurons": n_neurons - 3}}
    assert model.config.num_attention_heads == HEADS  # the shared config still describes the unpruned model
    model.train()
    loss = lm_loss(model, scoring_batches(name)[0])
    loss.backward()
    assert torch.isfinite(loss)
    block0 = find_layer_list(model)[1][0]
    grads = [p.grad for p in block0.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_attributes_updated_per_architecture():
    bert, gpt2, llama = build("bert"), build("gpt2_lm"), build("mistral_gqa")
    for model in (bert, gpt2, llama):
        apply_plan(model, {0: {"heads": [0], "neurons": [1, 2]}})
    att = bert.bert.encoder.layer[0].attention.self
    assert (att.num_attention_heads, att.all_head_size, att.query.out_features) == (1, 8, 8)
    assert bert.bert.encoder.layer[0].intermediate.dense.out_features == 2
    assert bert.bert.encoder.layer[0].output.dense.in_features == 2
    a = gpt2.transformer.h[0].attn
    assert (a.split_size, a.num_heads, a.embed_dim, a.c_attn.nf, a.c_proj.nx) == (8, 1, HIDDEN, 24, 8)
    assert tuple(a.c_attn.bias.shape) == (24,) and tuple(a.c_attn.weight.shape) == (HIDDEN, 24)
    assert (gpt2.transformer.h[0].mlp.c_fc.nf, gpt2.transformer.h[0].mlp.c_proj.nx) == (2, 2)
    s = llama.model.layers[0].self_attn
    sizes = (s.q_proj.out_features, s.k_proj.out_features, s.v_proj.out_features, s.o_proj.in_features)
    assert sizes == (16, 8, 8, 16) and s.num_key_value_groups == 2
    assert llama.model.layers[0].mlp.intermediate_size == 2


def test_dtype_device_and_requires_grad_preserved():
    model = tiny_classifier("bert", hidden_size=HIDDEN, num_heads=HEADS, dtype=torch.float16)
    query = model.bert.encoder.layer[0].attention.self.query
    query.weight.requires_grad_(False)
    apply_plan(model, {0: {"heads": [1, 2]}})
    assert query.weight.dtype == torch.float16 and query.bias.dtype == torch.float16
    assert not query.weight.requires_grad and query.bias.requires_grad
    assert query.weight.device == model.bert.embeddings.word_embeddings.weight.device


@pytest.mark.parametrize("name", ["bert", "gpt2_lm", "llama_gqa_bias"])
def test_fresh_model_replays_plan_and_loads_state(name):
    model = build(name)
    plan = prune_structured(model, heads=0.5, neurons=0.25, method="magnitude")
    plan = json.loads(json.dumps(plan))  # what a saved plan looks like on disk
    fresh = type(model)(model.config).to(torch.float64).eval()
    apply_plan(fresh, plan)
    fresh.load_state_dict(model.state_dict())
    assert structure_of(fresh) == structure_of(model)
    torch.testing.assert_close(logits(fresh), logits(model), rtol=0, atol=0)


# ---------------------------------------------------------------------------- planning
@settings(max_examples=60, deadline=None)
@given(
    blocks=st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=12), min_size=1, max_size=3),
    fraction=st.floats(0.0, 0.999),
)
def test_plan_pruning_keeps_highest_scores(blocks, fraction):
    scores = {i: {"heads": torch.tensor(s, dtype=torch.float32), "neurons": torch.tensor(s[::-1], dtype=torch.float32)}
              for i, s in enumerate(blocks)}
    plan = plan_pruning(scores, heads=fraction, neurons=fraction)
    assert set(plan) == set(scores)
    for i, per_kind in scores.items():
        for kind, values in per_kind.items():
            n, kept = len(values), plan[i][kind]
            assert len(kept) == n - min(round(fraction * n), n - 1) >= 1
            assert kept == sorted(set(kept))
            removed = [j for j in range(n) if j not in kept]
            for r in removed:
                for k in kept:  # every kept unit beats every removed one; ties keep the lower index
                    assert values[k] > values[r] or (values[k] == values[r] and k < r)


def test_plan_pruning_example_and_zero_fraction():
    scores = {0: {"heads": torch.tensor([3.0, 1.0, 2.0, 0.5]), "neurons": torch.tensor([1.0, 1.0, 1.0])}}
    assert plan_pruning(scores, heads=0.5, neurons=0.34) == {0: {"heads": [0, 2], "neurons": [0, 1]}}
    assert plan_pruning(scores) == {0: {"heads": [0, 1, 2, 3], "neurons": [0, 1, 2]}}
    assert plan_pruning(scores, heads=0.99)[0]["heads"] == [0]


# ---------------------------------------------------------------------------- importance
@pytest.mark.parametrize("name", ["bert", "gpt2_cls", "llama_gqa_bias"])
def test_taylor_scores_dead_head_zero_and_prunes_it_first(name):
    model = build(name)
    zero_units(model, 0, [1], [4])
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    embeddings = model.get_input_embeddings().weight
    frozen = [embeddings, head_out(find_layer_list(model)[1][0])[0]]  # outside and inside the scored units
    for p in frozen:
        p.requires_grad_(False)
    model.train()
    scores = head_neuron_importance(model, scoring_batches(name), lm_loss, method="taylor")
    heads0, neurons0 = scores[0]["heads"], scores[0]["neurons"]
    assert heads0[1] == 0 and (heads0[[u for u in range(len(heads0)) if u != 1]] > 0).all()
    assert neurons0[4] == 0 and (neurons0 > 0).sum() == len(neurons0) - 1
    assert (scores[1]["heads"] > 0).all()
    # the model is left as it was: .grad values, train mode, requires_grad flags
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [all(p is not f for f in frozen)
                                                              for p in model.parameters()]
    plan = prune_structured(model, heads=1 / len(heads0), batches=scoring_batches(name), loss_fn=lm_loss)
    assert plan[0]["heads"] == [u for u in range(len(heads0)) if u != 1]
    assert structure_of(model)[0]["heads"] == len(heads0) - 1


def test_taylor_is_eval_mode_and_accumulates_over_batches():
    model = build("bert")
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.5
    model.train()
    batches = scoring_batches("bert")
    first = head_neuron_importance(model, batches, lm_loss)
    again = head_neuron_importance(model, batches, lm_loss)
    torch.testing.assert_close(first[0]["heads"], again[0]["heads"])  # no dropout noise
    with torch.no_grad():  # scoring turns gradients on itself
        torch.testing.assert_close(head_neuron_importance(model, batches, lm_loss)[0]["heads"], first[0]["heads"])
    # gradients are summed before |w * g|: the same batch twice doubles every score
    single = head_neuron_importance(model, batches[:1], lm_loss)
    twice = head_neuron_importance(model, batches[:1] * 2, lm_loss)
    for kind in ("heads", "neurons"):
        torch.testing.assert_close(twice[1][kind], 2 * single[1][kind])
    assert not torch.allclose(first[0]["heads"], single[0]["heads"])


def test_magnitude_scores_zeroed_head_zero():
    model = build("gpt2_lm")
    att = model.transformer.h[1].attn
    hd = att.head_dim
    with torch.no_grad():
        for c in range(3):  # q, k, v columns of head 2 in c_attn (Conv1D: [in, 3 * embed])
            att.c_attn.weight[:, c * HIDDEN + 2 * hd:c * HIDDEN + 3 * hd] = 0
            att.c_attn.bias[c * HIDDEN + 2 * hd:c * HIDDEN + 3 * hd] = 0
        att.c_proj.weight[2 * hd:3 * hd, :] = 0
    scores = head_neuron_importance(model, None, None, method="magnitude")
    assert scores[1]["heads"][2] == 0 and (scores[1]["heads"][[0, 1, 3]] > 0).all()
    assert (scores[0]["heads"] > 0).all() and scores[0]["neurons"].shape == (4 * HIDDEN,)
    plan = prune_structured(model, heads=0.25, method="magnitude")
    assert plan[1]["heads"] == [0, 1, 3]


# ---------------------------------------------------------------------------- errors
def test_unsupported_models_are_rejected():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_heads=HEADS,
                                                                  n_layers=2, hidden_dim=64))
    for model in (nn.Sequential(nn.Linear(4, 4), nn.ReLU()), distil):
        with pytest.raises(ModelError, match="gpt2"):
            structure_of(model)
        with pytest.raises(ModelError, match="bert, roberta"):
            prune_structured(model, heads=0.5, method="magnitude")
    assert "distilbert" not in SUPPORTED


def test_bad_arguments_are_rejected():
    model = build("bert")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for heads, neurons in ((1.0, 0.0), (0.0, 1.0), (-0.1, 0.0), (float("nan"), 0.0)):
        with pytest.raises(ModelError, match=r"\[0, 1\)"):
            prune_structured(model, heads=heads, neurons=neurons, method="magnitude")
    with pytest.raises(ModelError, match="magnitude"):
        head_neuron_importance(model, None, None, method="taylor")
    with pytest.raises(ModelError, match="unknown importance method"):
        head_neuron_importance(model, None, None, method="random")
    bad_plans = [{0: {"heads": [0, 4]}}, {0: {"heads": [2, 1]}}, {0: {"heads": [1, 1]}}, {0: {"heads": []}},
                 {0: {"neurons": [-1, 0]}}, {5: {"heads": [0]}}, {0: {"layers": [0]}},
                 {0: {"neurons": [0]}, 1: {"heads": [0, 9]}}]
    for plan in bad_plans:
        with pytest.raises(ModelError):
            apply_plan(model, plan)
    assert structure_of(model) == {i: {"heads": HEADS, "neurons": 2 * HIDDEN} for i in range(2)}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # nothing was half-cut
