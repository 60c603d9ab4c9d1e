"""Distillation temperature: the same student distilled with T in {0.5, 1, 2, 5, 10}; held-out
accuracy/F1 and NLL (perplexity for a causal LM), student tokens/s. Prints a table and writes
results/temperature.{json,md,png}.

    metakd bench temperature [--quick] [--temperatures 0.5,1,2,5,10] [--seeds 0,1,2]
                             [--config RUN.yaml] [--set distill.meta_update=lora] [--steps N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import sweep
from .sweep import Variant

NAME = "temperature"
TEMPERATURES = (0.5, 1.0, 2.0, 5.0, 10.0)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperatures", default=",".join(f"{t:g}" for t in TEMPERATURES),
                   help="comma-separated softmax temperatures (default: %(default)s)")


def variants(args: argparse.Namespace, run: Any, teacher: dict[str, Any]) -> list[Variant]:
    try:
        temps = [float(x) for x in args.temperatures.split(",") if x.strip()]
    except ValueError:
        temps = []
    if not temps or any(t <= 0 for t in temps) or len(set(temps)) != len(temps):
        raise sweep.ConfigError(f"--temperatures takes distinct positive numbers; got {args.temperatures!r}")
    return [Variant(f"T={t:g}", {"distill.temperature": t}, {"temperature": t}) for t in temps]


def plot(summary: list[dict[str, Any]], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = [e["values"]["temperature"] for e in summary]
    panels = [(key, title) for key, title, _ in sweep.quality_keys(task)[:1]] + [("loss", "held-out NLL"),
                                                                                 ("tokens_per_second", "student tokens/s")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        stats = [e.get(key) or {"mean": float("nan"), "std": 0.0} for e in summary]
        ax.errorbar(temps, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], marker="o", capsize=3)
        ax.set_xscale("log")
        ax.set_xticks(temps, [f"{t:g}" for t in temps])
        ax.set_xlabel("temperature T")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args, run, teacher, results, summary) -> int:
    body = sweep.table(summary, [("T", lambda e: f"{e['values']['temperature']:g}")], run.task)
    key, title, _ = sweep.quality_keys(run.task)[0]
    best = (min if key == "perplexity" else max)(summary, key=lambda e: e[key]["mean"])
    notes = [f"best {title}: T={best['values']['temperature']:g} ({best[key]['mean']:.4f})"]
    return sweep.finish(NAME, args, run, teacher, results, summary, body, notes,
                        lambda png: plot(summary, run.task, png))


def main(argv: list[str] | None = None) -> int:
    return sweep.sweep_main(NAME, argv, __doc__, _args, variants, report)


if __name__ == "__main__":
    sys.exit(main())
