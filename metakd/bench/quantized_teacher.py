"""What a quantized teacher costs and changes: the same teacher in fp32, bf16, 8-bit (LLM.int8()) and
4-bit (NF4, FP4) under a LoRA meta-update, on the same student and batches. Prints a table and writes
results/quantized_teacher.{json,md,png}.

    metakd bench quantized-teacher [--quick] [--steps N] [--backend jvp] [--device cpu|cuda] [--out results]

Per variant, in its own process (peak memory is per process): the teacher's weight bytes as stored,
its logits on the first batch against fp32 (max |Δ|, KL), the LoRA meta-gradient of the first batch
against fp32's (cosine, relative error; same adapter init), then the median seconds per meta-step
and the process's peak memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import DistillConfig
from ..models import LORA_MARKER
from .report import (fmt_bytes, markdown_table, print_report, run_worker, serve_worker, settings_from_args,
                     write_results)

NAME = "quantized_teacher"
# variant -> (bits, quant_type) for quantized ones, or the dtype of an unquantized teacher
VARIANTS = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": (8, "nf4"), "nf4": (4, "nf4"), "fp4": (4, "fp4")}
BACKENDS = ("higher", "jvp", "finite_diff")
LORA_B_STD = 0.02
"""lora_B starts at zero (peft), where the gradient of lora_A vanishes; the second agreement check sets
lora_B to the same seeded N(0, LORA_B_STD²) values in every variant so that both factors are compared."""

FULL = dict(steps=5, warmup=1, batch_size=32, seq_len=64, student_layers=2)
QUICK = dict(steps=2, warmup=1, batch_size=8, seq_len=16, student_layers=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="metakd bench quantized-teacher", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny random BERT teacher and short batches (a smoke test)")
    p.add_argument("--steps", type=int, help="measured meta-steps per variant (after the warm-up steps)")
    p.add_argument("--warmup", type=int, help="unmeasured meta-steps first")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int, help="tokens per example (every batch is padded to this length)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="subset of " + ",".join(VARIANTS))
    p.add_argument("--backend", default="jvp", choices=BACKENDS, help="meta-gradient backend (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results", help="directory for the result files")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    s = settings_from_args(p, args, QUICK if args.quick else FULL, ("steps", "warmup", "batch_size", "seq_len"),
                           minimum={"warmup": 0})
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variant_list or any(v not in VARIANTS for v in args.variant_list):
        p.error(f"--variants takes a subset of {','.join(VARIANTS)}; got {args.variants!r}")
    if "fp32" not in args.variant_list:
        args.variant_list.insert(0, "fp32")  # the reference of every agreement column
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    args.settings = s
    return args


# ---------------------------------------------------------------------------- shared inputs (parent)
def prepare(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Save the fp32 teacher (with its seeded classification head), the student and the batches once,
    so that every variant's process loads the same things from disk."""
    from ..models import find_layer_list, student_from_teacher, tiny_classifier
    from .meta_grad import make_batches

    s = args.settings
    torch.manual_seed(args.seed)
    if args.quick:
        teacher = tiny_classifier("bert", vocab_size=512, hidden_size=64, num_layers=4, num_heads=4,
                                  max_positions=64, seed=args.seed)
        tokenizer = None
        description = "tiny random BERT (4 layers, width 64)"
    else:
        from ..models import embedded_teacher_path, load_classifier

        teacher, tokenizer = load_classifier(embedded_teacher_path(), 2)  # fresh head: seeded above
        description = "pretrained MiniLM-L6-H384 (22.7M parameters) with a seeded 2-label head"
    n_blocks = len(find_layer_list(teacher)[1])
    layers = [0, n_blocks - 1][: s["student_layers"]] if s["student_layers"] > 1 else [0]
    student = student_from_teacher(teacher, layers)
    teacher.save_pretrained(tmp / "teacher", safe_serialization=True)
    student.save_pretrained(tmp / "student", safe_serialization=True)
    n = s["warmup"] + s["steps"]
    vocab = teacher.config.vocab_size
    batches = make_batches(n, s["batch_size"], s["seq_len"], tokenizer, vocab, args.seed)
    quizzes = make_batches(n, s["batch_size"], s["seq_len"], tokenizer, vocab, args.seed + 1)
    torch.save({"batches": batches, "quizzes": quizzes}, tmp / "batches.pt")
    return {"teacher": description, "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "student_layers": layers}


# ---------------------------------------------------------------------------- one variant (worker)
def _load_teacher(variant: str, directory: str, device: torch.device):
    from transformers import AutoModelForSequenceClassification

    kind = VARIANTS[variant]
    if isinstance(kind, torch.dtype):
        return AutoModelForSequenceClassification.from_pretrained(directory, dtype=kind).to(device)
    from ..quantization import load_quantized

    bits, quant_type = kind
    return load_quantized(directory, bits, quant_type, num_labels=2, device=device)


@torch.no_grad()
def set_adapters(lora: list[tuple[str, torch.Tensor]], seed: int, b_std: float) -> None:
    """Draw the LoRA factors from a seeded generator in float32, the same values for every variant
    whatever the base's dtype: lora_A ~ U(−1/√fan_in, 1/√fan_in) (peft's Kaiming-uniform init),
    lora_B ~ N(0, b_std²) (b_std = 0: peft's zeros)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in lora:
        if "lora_A" in name:
            bound = p.shape[1] ** -0.5
            p.copy_(((torch.rand(p.shape, generator=g) * 2 - 1) * bound).to(p.dtype))
        elif "lora_B" in name:
            p.copy_((b_std * torch.randn(p.shape, generator=g)).to(p.dtype))


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.detach().reshape(-1).float().cpu() for g in grads])


def run_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """Load this variant's teacher, measure its bytes, logits and meta-gradients, then time meta-steps."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from ..distiller import MetaDistiller
    from ..quantization import HEAD_MODULES, teacher_memory_bytes
    from ..telemetry import measure
    from .meta_grad import _rss_bytes

    import peft  # noqa: F401  (imported before the baseline RSS, like bitsandbytes below)

    hf_logging.set_verbosity_error()
    try:  # the same libraries in every variant's process, so that peak memory compares like with like
        import bitsandbytes  # noqa: F401
    except ImportError:
        pass
    device = torch.device(spec["device"])
    torch.manual_seed(spec["seed"])
    data = torch.load(spec["batches"])
    batches, quizzes = data["batches"], data["quizzes"]
    baseline_rss = _rss_bytes()
    with measure(device) as m:
        teacher = _load_teacher(spec["variant"], spec["teacher_dir"], device)
        weight_bytes = teacher_memory_bytes(teacher)
        linear_bytes = sum(teacher_memory_bytes(mod) for name, mod in teacher.named_modules()  # bnb layers are Linear
                           if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in HEAD_MODULES)
        with torch.no_grad():
            logits = teacher(**{k: v.to(device) for k, v in batches[0].items() if k != "labels"}).logits
        student = AutoModelForSequenceClassification.from_pretrained(spec["student_dir"], dtype=torch.float32)
        d = MetaDistiller(teacher, student, DistillConfig(**spec["distill"]), device=device)
        lora = [(n, p) for n, p in d.teacher.named_parameters() if LORA_MARKER in n]
        set_adapters(lora, spec["seed"], b_std=0.0)  # peft's init, drawn identically in every variant
        init_checksum = float(sum(p.detach().double().sum() for _, p in lora))
        grad_b0 = _flat(d.meta_gradient(batches[0], quizzes[0]).phi_grads)
        set_adapters(lora, spec["seed"], b_std=LORA_B_STD)
        grad_b = _flat(d.meta_gradient(batches[0], quizzes[0]).phi_grads)
        set_adapters(lora, spec["seed"], b_std=0.0)  # train from peft's init
        history = [d.step(b, q) for b, q in zip(batches, quizzes)]
    torch.save({"logits": logits.float().cpu(), "grad_b0": grad_b0, "grad_b": grad_b}, spec["dump"])
    secs = [h["seconds"] for h in history[spec["warmup"]:]]
    losses = [h["quiz_loss"] for h in history]
    return {
        "variant": spec["variant"],
        "weight_bytes": weight_bytes,
        "linear_bytes": linear_bytes,
        "trainable_teacher_params": d.trainable_teacher_parameters(),
        "adapter_init_checksum": init_checksum,
        "median_step_seconds": statistics.median(secs),
        "step_seconds": secs,
        "quiz_losses": losses,
        "finite": all(torch.isfinite(torch.tensor([h["inner_loss"], h["quiz_loss"], h["student_loss"]])).all()
                      for h in history),
        "peak_memory_bytes": m.peak_memory_bytes,
        "memory_source": m.memory_source,
        "baseline_rss_bytes": baseline_rss,
    }


# ---------------------------------------------------------------------------- agreement (parent)
def agreement(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """Cosine similarity and relative L2 error ‖got − want‖ / ‖want‖."""
    cos = float(torch.nn.functional.cosine_similarity(got, want, dim=0))
    return cos, float((got - want).norm() / want.norm())


def logits_agreement(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """max |got − want| and the batch-mean KL(softmax(want) ‖ softmax(got)) at temperature 1."""
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), want.log_softmax(-1), log_target=True,
                                    reduction="batchmean")
    return float((got - want).abs().max()), float(kl)


def add_agreement(results: list[dict[str, Any]], dumps: dict[str, Path]) -> None:
    ref = torch.load(dumps["fp32"])
    fp32 = next(r for r in results if r["variant"] == "fp32")
    for r in results:
        mine = torch.load(dumps[r["variant"]])
        r["logits_max_abs_diff"], r["logits_kl"] = logits_agreement(mine["logits"], ref["logits"])
        r["grad_cosine_b0"], r["grad_rel_error_b0"] = agreement(mine["grad_b0"], ref["grad_b0"])
        r["grad_cosine"], r["grad_rel_error"] = agreement(mine["grad_b"], ref["grad_b"])
        r["weight_bytes_vs_fp32"] = r["weight_bytes"] / fp32["weight_bytes"]
        r["linear_bytes_vs_fp32"] = r["linear_bytes"] / fp32["linear_bytes"]
        r["time_vs_fp32"] = r["median_step_seconds"] / fp32["median_step_seconds"]
        r["same_adapter_init"] = r["adapter_init_checksum"] == fp32["adapter_init_checksum"]
        if r["peak_memory_bytes"] is not None and r["baseline_rss_bytes"] is not None and r["memory_source"] != \
                "cuda max_memory_allocated":
            r["peak_above_baseline_bytes"] = r["peak_memory_bytes"] - r["baseline_rss_bytes"]


# ---------------------------------------------------------------------------- report
def table(results: list[dict[str, Any]]) -> str:
    rows = [[r["variant"], fmt_bytes(r["weight_bytes"]), f"{r['weight_bytes_vs_fp32']:.3f}×",
             f"{fmt_bytes(r['linear_bytes'])} ({r['linear_bytes_vs_fp32']:.3f}×)",
             fmt_bytes(r["peak_memory_bytes"]), fmt_bytes(r.get("peak_above_baseline_bytes")),
             f"{r['median_step_seconds']:.3f}", f"{r['time_vs_fp32']:.2f}×",
             f"{r['logits_max_abs_diff']:.2e}", f"{r['logits_kl']:.1e}",
             f"{r['grad_cosine_b0']:.4f}", f"{r['grad_cosine']:.4f}", f"{r['grad_rel_error']:.3f}"]
            for r in results]
    cols = ["teacher", "weight bytes", "× fp32", "of which Linear layers (× fp32)", "peak memory (process)", "of which above imports",
            "s/meta-step (median)", "× fp32",
            "logits max abs diff", "logits KL", "meta-grad cosine (lora_B = 0)", "meta-grad cosine (lora_B ≠ 0)",
            "meta-grad rel. error (lora_B ≠ 0)"]
    return markdown_table(cols, rows)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["variant"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [("teacher weights (MiB)", [r["weight_bytes"] / 2**20 for r in results]),
              ("peak memory of the process (MiB)", [(r["peak_memory_bytes"] or 0) / 2**20 for r in results]),
              ("seconds per meta-step (median)", [r["median_step_seconds"] for r in results])]
    for ax, (title, values) in zip(axes, panels):
        ax.bar(labels, values, color=["#888888", "#e9c46a", "#2a9d8f", "#264653", "#e76f51"][: len(labels)])
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(payload: dict[str, Any], out: str | Path) -> None:
    results, s = payload["results"], payload["settings"]
    threads = torch.get_num_threads()
    notes = [
        f"teacher: {payload['teacher']}; student: its blocks {payload['student_layers']} (fp32); LoRA r=8 on "
        f"query/value, meta_grad={payload['backend']}, pilot=restore; batch {s['batch_size']} × {s['seq_len']} "
        f"tokens; {s['steps']} measured meta-steps after {s['warmup']} warm-up, median; device {payload['device']}, "
        f"{threads} torch thread(s)",
        "weight bytes: parameters and buffers as stored, plus bitsandbytes' quantization constants (4-bit "
        "absmax/code tables, 8-bit row scales); bitsandbytes quantizes the Linear layers (here all but the "
        "classification head), while embeddings, norms and the head stay in float32: with a 30k-token vocabulary "
        "the word embeddings are about half of MiniLM's parameters, which bounds the whole-model saving",
        "peak memory: " + (results[0]["memory_source"] if results else "n/a") + ", one process per variant (on "
        "CPU the lifetime peak RSS, including loading the teacher and the Python libraries; 'above imports' "
        "subtracts the RSS after importing torch, transformers, peft and bitsandbytes, before loading anything)",
        "logits: first batch, the variant's teacher against the fp32 teacher (same weights and head); KL(p_fp32 ‖ "
        "p_variant) at temperature 1, batch mean",
        "meta-grad: the first batch's LoRA meta-gradient against fp32's with the same adapter init (seeded; "
        + ("checked identical" if all(r["same_adapter_init"] for r in results) else "NOT identical: see JSON")
        + f"): lora_A drawn like peft's Kaiming-uniform init from one seeded generator; 'lora_B = 0' is peft's "
        f"init (only lora_B gets a gradient), 'lora_B ≠ 0' sets lora_B to the same seeded N(0, {LORA_B_STD}²) "
        "values in every variant so that lora_A's gradient is compared too; the timed steps start from lora_B = 0",
        "8-bit (LLM.int8()) casts matmul inputs to float16; 4-bit dequantizes to the compute dtype (float32) "
        "on every forward",
    ]
    if not all(r["finite"] for r in results):
        notes.append("NON-FINITE losses in: " + ", ".join(r["variant"] for r in results if not r["finite"]))
    body = table(results)
    paths = write_results(out, NAME, payload, body, notes)
    png = Path(out) / f"{NAME}.png"
    plot(results, png)
    print_report(payload, body, notes, [paths["json"], paths["md"], png])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return serve_worker(args.worker, run_variant)
    if any(not isinstance(VARIANTS[v], torch.dtype) for v in args.variant_list):
        from ..quantization import require_bitsandbytes

        require_bitsandbytes()
    s = args.settings
    distill = DistillConfig(meta_update="lora", meta_grad=args.backend, pilot="restore", batch_size=s["batch_size"],
                            student_lr=5e-4, teacher_lr=2e-5, pilot_lr=1e-2, lora_target_modules=["query", "value"],
                            seed=args.seed, progress=False).to_dict()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="metakd-quantized-teacher-") as tmp_name:
        tmp = Path(tmp_name)
        info = prepare(args, tmp)
        dumps = {}
        for i, variant in enumerate(args.variant_list, 1):
            dumps[variant] = tmp / f"{variant}.pt"
            spec = dict(variant=variant, label=variant, teacher_dir=str(tmp / "teacher"),
                        student_dir=str(tmp / "student"), batches=str(tmp / "batches.pt"), dump=str(dumps[variant]),
                        device=args.device, seed=args.seed, warmup=s["warmup"], distill=distill)
            print(f"[{i}/{len(args.variant_list)}] {variant} teacher", file=sys.stderr, flush=True)
            r = run_worker(__name__, spec)
            print(f"    {fmt_bytes(r['weight_bytes'])} of weights, {r['median_step_seconds']:.3f} s/meta-step, "
                  f"peak memory {fmt_bytes(r['peak_memory_bytes'])}", file=sys.stderr, flush=True)
            results.append(r)
        add_agreement(results, dumps)
    payload = {"benchmark": NAME, "quick": args.quick, "settings": s, "backend": args.backend,
               "device": args.device, "seed": args.seed, "torch_threads": torch.get_num_threads(), **info,
               "results": results}
    report(payload, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
