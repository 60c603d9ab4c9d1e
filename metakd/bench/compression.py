"""How small can the distilled student get, and what does each step cost in accuracy?

One student is distilled (cached, so a second run starts at once), then every compression
variant starts from a copy of it and runs the pipeline of ``metakd compress``: unstructured
magnitude pruning at several sparsities (global and per layer, with and without a recovery
distillation), structured pruning of attention heads and FFN neurons (Taylor or magnitude
importance), min-max quantization at 8/4/3/2 bits (per channel and per tensor, embeddings
included or not), PyTorch dynamic int8, and combinations. Each variant's final model is saved
(safetensors + JSON), its bytes on disk measured, loaded back and scored again (the table's
"reload" column is the largest score difference after reload), and scored: accuracy/F1 (or
perplexity) and the student's inference throughput over the held-out split.

Default (offline): the SST-2 MiniLM-L6 setting of the sweep benchmarks (student = teacher blocks
[0, 5], plain KD). ``--quick``: a tiny random BERT on a slice of the embedded task (< 2 min).
Writes ``results/compression.{json,md,png}`` (the plot: accuracy vs bytes on disk).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .report import fmt_bytes, markdown_table, print_report, write_results

RECOVERY_STEPS = 40


def variants(recovery: int, quick: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, family, compress settings) of every variant."""
    r = {"recovery_steps": recovery}
    structured = {"prune": "structured", "heads": 0.5, "neurons": 0.5}
    if quick:
        return [
            ("magnitude 50%", "pruning", {"prune": "magnitude", "sparsity": 0.5}),
            ("heads+neurons 50% + recovery", "pruning", {**structured, **r}),
            ("minmax 4-bit/channel", "quantization", {"quantize": "minmax", "bits": 4}),
            ("dynamic int8", "quantization", {"quantize": "dynamic_int8"}),
            ("magnitude 50% + minmax 4-bit + emb", "combined",
             {"prune": "magnitude", "sparsity": 0.5, "quantize": "minmax", "bits": 4, "quantize_embeddings": True}),
        ]
    out = [(f"magnitude {int(s * 100)}%", "pruning", {"prune": "magnitude", "sparsity": s}) for s in (0.3, 0.5, 0.7, 0.9)]
    out += [
        ("magnitude 50% per layer", "pruning", {"prune": "magnitude", "sparsity": 0.5, "prune_scope": "layer"}),
        ("magnitude 70% + recovery", "pruning", {"prune": "magnitude", "sparsity": 0.7, **r}),
        ("heads 50%", "pruning", {"prune": "structured", "heads": 0.5}),
        ("neurons 50%", "pruning", {"prune": "structured", "neurons": 0.5}),
        ("heads+neurons 50%", "pruning", structured),
        ("heads+neurons 50% (magnitude score)", "pruning", {**structured, "importance": "magnitude"}),
        ("heads+neurons 50% + recovery", "pruning", {**structured, **r}),
    ]
    out += [(f"minmax {b}-bit/channel", "quantization", {"quantize": "minmax", "bits": b}) for b in (8, 4, 3, 2)]
    out += [
        ("minmax 4-bit/tensor", "quantization", {"quantize": "minmax", "bits": 4, "granularity": "tensor"}),
        ("minmax 4-bit/channel + emb", "quantization", {"quantize": "minmax", "bits": 4, "quantize_embeddings": True}),
        ("minmax 8-bit/channel + emb", "quantization", {"quantize": "minmax", "bits": 8, "quantize_embeddings": True}),
        ("dynamic int8", "quantization", {"quantize": "dynamic_int8"}),
        ("magnitude 50% + minmax 4-bit + emb", "combined",
         {"prune": "magnitude", "sparsity": 0.5, "quantize": "minmax", "bits": 4, "quantize_embeddings": True}),
        ("heads+neurons 50% + recovery + int8", "combined", {**structured, **r, "quantize": "dynamic_int8"}),
        ("heads+neurons 50% + recovery + 4-bit + emb", "combined",
         {**structured, **r, "quantize": "minmax", "bits": 4, "quantize_embeddings": True}),
    ]
    return out


def _parser() -> argparse.ArgumentParser:
    from .sweep import add_arguments

    p = argparse.ArgumentParser(prog="metakd bench compression", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_arguments(p)
    p.add_argument("--recovery-steps", type=int, help=f"recovery distillation steps of the '+ recovery' variants "
                                                      f"(default {RECOVERY_STEPS}; --quick: 4)")
    p.add_argument("--only", help="comma-separated substrings: run only the variants whose label contains one")
    return p


def _student_dir(run) -> Path:
    """Where the benchmark's distilled student is cached: keyed by everything that shapes it."""
    from ..finetune import cache_dir, cache_key

    settings = run.to_dict()
    for key in ("output", "compress", "generation_tokens"):
        settings.pop(key, None)
    settings["distill"].pop("progress", None)
    return cache_dir() / "bench-students" / cache_key(kind="compression-student", version=1, run=settings)


def _row(label: str, family: str, report: dict[str, Any], base: dict[str, Any], seconds: float) -> dict[str, Any]:
    last = report["stages"][-1]
    return {"label": label, "family": family, "compress": report["compress"], "seconds": seconds,
            "final": {k: v for k, v in last.items() if k != "saved"},
            "stages": [{k: v for k, v in s.items() if k != "saved"} for s in report["stages"]],
            "reloaded": report["reloaded"], "size_ratio": last["bytes_on_disk"] / base["bytes_on_disk"]}


def _table(base: dict[str, Any], rows: list[dict[str, Any]], lm: bool) -> str:
    quality = ["perplexity"] if lm else ["accuracy", "F1", "Δ accuracy"]
    cols = ["#", "variant", "params", "non-zero", "bytes on disk", "size", *quality, "tokens/s (eval)", "reload Δ"]

    def line(index: str, label: str, r: dict[str, Any], ratio: float, reload: str) -> list[str]:
        e = r["eval"]
        q = ([f"{e['perplexity']:.2f}"] if lm else
             [f"{e['accuracy']:.4f}", f"{e['f1']:.4f}", f"{e['accuracy'] - base['eval']['accuracy']:+.4f}"])
        nonzero = f"{r['nonzero_params']:,}" if r["nonzero_params"] is not None else "n/a"
        return [index, label, f"{r['params']:,}", nonzero, fmt_bytes(r["bytes_on_disk"]), f"{ratio:.3f}x",
                *q, f"{e['tokens_per_second']:,.0f}", reload]

    body = [line("0", "distilled (fp32)", base, 1.0, "")]
    body += [line(str(i), r["label"], r["final"], r["size_ratio"], f"{r['reloaded']['max_abs_difference']:.1g}")
             for i, r in enumerate(rows, 1)]
    return markdown_table(cols, body)


def _plot(path: Path, base: dict[str, Any], rows: list[dict[str, Any]], lm: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "perplexity" if lm else "accuracy"
    fig, ax = plt.subplots(figsize=(9, 6))
    colors = {"pruning": "tab:blue", "quantization": "tab:orange", "combined": "tab:green"}
    ax.scatter([base["bytes_on_disk"] / 2**20], [base["eval"][key]], color="black", marker="*", s=160,
               label="distilled (fp32)", zorder=3)
    for family, color in colors.items():
        chosen = [r for r in rows if r["family"] == family]
        if chosen:
            ax.scatter([r["final"]["bytes_on_disk"] / 2**20 for r in chosen], [r["final"]["eval"][key] for r in chosen],
                       color=color, label=family, zorder=2)
    for i, r in enumerate(rows, 1):  # numbers, not labels: the variants crowd near full size (see the table)
        ax.annotate(str(i), (r["final"]["bytes_on_disk"] / 2**20, r["final"]["eval"][key]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes on disk (MiB, log scale; tokenizer excluded)")
    ax.set_ylabel(f"held-out {key}")
    ax.set_title("Compressing the distilled student: quality vs size (numbers: rows of compression.md)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import torch

    from ..compress.config import CompressConfig
    from ..compress.pipeline import compress_student, prepare
    from ..run import RunConfig
    from .sweep import base_run, check_data, describe, parse_common, prepare_teacher, with_overrides

    p = _parser()
    args = p.parse_args(argv)
    parse_common(p, args)
    if len(args.seed_list) != 1:
        p.error("compression runs one seed (the distilled student's); pass one value to --seeds")
    if args.recovery_steps is not None and args.recovery_steps < 1:
        p.error("--recovery-steps must be >= 1")
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    recovery = args.recovery_steps or (4 if args.quick else RECOVERY_STEPS)
    chosen = variants(recovery, args.quick)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        chosen = [v for v in chosen if any(w in v[0] for w in wanted)]
        if not chosen:
            p.error(f"--only {args.only!r} matches no variant")
    run = with_overrides(base_run(args), {"distill.seed": args.seed_list[0]})
    configs = [CompressConfig.from_dict(settings) for _, _, settings in chosen]  # bad values fail before any work
    splits = check_data(run)
    print(f"data: {run.data}: {len(splits['train'])} train, {len(splits['eval'])} eval", file=sys.stderr)
    teacher = prepare_teacher(run, fine_tune=not args.no_finetune, progress=not args.no_progress)
    run = with_overrides(run, {"teacher": teacher["teacher_dir"]})
    run = RunConfig.from_dict(dict(run.to_dict(), output=str(_student_dir(run))))
    start = time.perf_counter()
    prep = prepare(run, progress=not args.no_progress)
    distill_seconds = time.perf_counter() - start
    lm = run.task == "causal_lm"
    rows = []
    with tempfile.TemporaryDirectory(prefix="metakd-compression-") as tmp:
        base = prep.stages(Path(tmp) / "distilled").record("distilled", prep.student, {"method": "none"})
        for i, ((label, family, _), cc) in enumerate(zip(chosen, configs), 1):
            print(f"[{i}/{len(chosen)}] compression: {label}", file=sys.stderr)
            t0 = time.perf_counter()
            report = compress_student(prep, copy.deepcopy(prep.student), prep.stages(Path(tmp) / f"v{i}"), cc,
                                      progress=not args.no_progress)
            rows.append(_row(label, family, report, base, time.perf_counter() - t0))
    base = {k: v for k, v in base.items() if k != "saved"}
    body = _table(base, rows, lm)
    d = run.distill
    notes = [
        f"one student distilled once ({d.meta_update} meta-update, {d.max_steps} steps; cached in {run.output}, "
        f"{'reused' if distill_seconds < 60 else 'built'} in {distill_seconds:.0f} s); every variant starts from a "
        "copy of it",
        "bytes on disk: the saved model directory (safetensors + config + compression.json, tokenizer excluded); "
        "pruned float weights are stored sparse (1-bit mask + kept values) when that is smaller",
        "min-max variants are evaluated with dequantized float weights (the numbers a loader rebuilds), so their "
        "speed is the float model's; dynamic int8 runs int8 matmuls",
        f"recovery: {recovery} plain-KD steps from the distillation's teacher at the student's learning rate, pruned "
        "weights held at zero",
        "reload Δ: largest difference of accuracy/F1/loss (or perplexity) between the model before saving and the "
        "one loaded back from disk",
        "tokens/s: the student's forward over the held-out split (no gradients), "
        f"{torch.get_num_threads()} torch thread(s)",
        *describe(run, teacher, args)[:1],
    ]
    payload = {"benchmark": "compression", "quick": args.quick, "seed": args.seed_list[0],
               "threads": torch.get_num_threads(), "base_run": run.to_dict(), "teacher": teacher,
               "recovery_steps": recovery, "distilled": base, "variants": rows,
               "measured": {"bytes_on_disk": "measured: file sizes of the saved directory",
                            "quality": "measured on the held-out split", "tokens_per_second": "measured",
                            "reload": "measured: scores of the model loaded back from disk"}}
    paths = write_results(args.out, "compression", payload, body, notes)
    png = Path(args.out) / "compression.png"
    _plot(png, base, rows, lm)
    print_report(payload, body, notes, [paths["json"], paths["md"], png])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as exc:
        print(f"metakd: error: {exc}", file=sys.stderr)
        sys.exit(2)
