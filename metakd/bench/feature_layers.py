"""Hidden-state feature distillation from shallow, middle or deep teacher layers (and none): the
student's last hidden state is pulled towards one teacher layer by an MSE term next to the soft
labels. Held-out accuracy/F1 and NLL (perplexity for a causal LM), student tokens/s. Prints a
table and writes results/feature_layers.{json,md,png}.

    metakd bench feature-layers [--quick] [--depths none,shallow,middle,deep] [--feature-weight 1.0]
                                [--seeds 0,1,2] [--config RUN.yaml] [--set KEY=VALUE] [--steps N]

With a teacher of n blocks: shallow = the output of block ceil(n/4), middle = block n//2, deep =
block n (the last). Student and teacher widths may differ: the harness learns a projection.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from . import sweep
from .sweep import Variant

NAME = "feature_layers"
DEPTHS = ("none", "shallow", "middle", "deep")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def teacher_layer(depth: str, n_blocks: int) -> int:
    """The teacher hidden state (1..n_blocks: the output of that block) a depth names."""
    if n_blocks < 1:
        raise ValueError(f"a teacher needs at least one block, got {n_blocks}")
    return {"shallow": math.ceil(n_blocks / 4), "middle": max(1, n_blocks // 2), "deep": n_blocks}[depth]


def teacher_blocks(teacher_dir: str) -> int:
    """Number of transformer blocks of a saved model, from its config.json."""
    config = json.loads((Path(teacher_dir) / "config.json").read_text())
    for key in _LAYER_KEYS:
        if isinstance(config.get(key), int):
            return config[key]
    raise sweep.ConfigError(f"cannot tell how many blocks the teacher in {teacher_dir} has "
                            f"(none of {', '.join(_LAYER_KEYS)} in its config.json)")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--depths", default=",".join(DEPTHS),
                   help="comma-separated subset of none,shallow,middle,deep (default: %(default)s)")
    p.add_argument("--feature-weight", type=float, default=1.0,
                   help="weight of the hidden-state MSE term (default: %(default)s)")


def variants(args: argparse.Namespace, run: Any, teacher: dict[str, Any]) -> list[Variant]:
    depths = [d.strip() for d in args.depths.split(",") if d.strip()]
    if not depths or any(d not in DEPTHS for d in depths) or len(set(depths)) != len(depths):
        raise sweep.ConfigError(f"--depths takes distinct names among {', '.join(DEPTHS)}; got {args.depths!r}")
    if not args.feature_weight > 0:
        raise sweep.ConfigError(f"--feature-weight must be > 0, got {args.feature_weight}")
    n = teacher_blocks(teacher["teacher_dir"]) if teacher else 4  # before the teacher exists: check the flags only
    out = []
    for d in depths:
        if d == "none":
            out.append(Variant("none", {"distill.feature_layers": None, "distill.feature_weight": 0.0},
                               {"depth": d, "teacher_layer": None}))
            continue
        layer = teacher_layer(d, n)
        out.append(Variant(f"{d} (teacher layer {layer}/{n})",
                           {"distill.feature_layers": {-1: layer}, "distill.feature_weight": args.feature_weight},
                           {"depth": d, "teacher_layer": layer, "teacher_blocks": n}))
    return out


def plot(summary: list[dict[str, Any]], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [e["values"]["depth"] for e in summary]
    key, title, _ = sweep.quality_keys(task)[0]
    panels = [(key, title), ("loss", "held-out NLL"), ("tokens_per_second", "student tokens/s")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (k, t) in zip(axes, panels):
        stats = [e.get(k) or {"mean": float("nan"), "std": 0.0} for e in summary]
        ax.bar(labels, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], capsize=4,
               color=["#888888"] + ["#2a9d8f"] * (len(labels) - 1) if labels[:1] == ["none"] else "#2a9d8f")
        if k != "tokens_per_second":
            lo = min(s["mean"] - s["std"] for s in stats)
            hi = max(s["mean"] + s["std"] for s in stats)
            pad = (hi - lo) * 0.5 or abs(hi) * 0.05 or 1.0
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("teacher layer depth")
        ax.set_title(t)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args, run, teacher, results, summary) -> int:
    own = [("feature source", lambda e: e["label"]),
           ("feature weight", lambda e: "0" if e["values"]["depth"] == "none" else f"{args.feature_weight:g}")]
    body = sweep.table(summary, own, run.task)
    key, title, _ = sweep.quality_keys(run.task)[0]
    best = (min if key == "perplexity" else max)(summary, key=lambda e: e[key]["mean"])
    notes = [f"best {title}: {best['label']} ({best[key]['mean']:.4f})",
             "the student's last hidden state (-1) is the one matched; a learned linear projection maps widths "
             "when they differ"]
    return sweep.finish(NAME, args, run, teacher, results, summary, body, notes,
                        lambda png: plot(summary, run.task, png))


def main(argv: list[str] | None = None) -> int:
    return sweep.sweep_main(NAME, argv, __doc__, _args, variants, report)


if __name__ == "__main__":
    sys.exit(main())
