"""Control for the TREC anchored study: plain KD from each seed's final anchored teacher, frozen, with the
chosen recipe's student-side distillation loss (metadistil: MSE at T=5) instead of the base KL at T=2.
It tells the teaching (anchored arm - this control) apart from the loss change (this control - plain KD).

Run from the checkout after the study (`bench anchored ... --keep-runs KEEP --name anchored_trec_layers
--out results`), with the same KEEP (it holds the runs and each seed's final anchored teacher):
    python results/runs/anchored_trec_layers/loss_control.py KEEP results
(As it ran here: KEEP=/work/runs/keep_trec, the study's JSON in /work/runs/study_out.)"""
import json, sys
from pathlib import Path

KEEP, OUT = sys.argv[1], Path(sys.argv[2])

from metakd.bench import anchored, quality
from metakd.bench.stats import paired_difference
from metakd.bench.quality_report import score

ARGV = ["--jobs", "2", "--threads", "1", "--no-progress", "--seeds", "1,2,3,4,5", "--grid-seed", "0",
        "--teacher-lr", "1e-3", "--pilot-lr", "1e-1", "--lora-r", "4",
        "--cells", "recipe=metadistil,quiz_batches=4",
        "--set", "data=../shared/data/trec", "--set", "n_train=2000", "--set", "n_eval=null", "--set", "data_seed=0",
        "--set", "finetune.disjoint=true", "--set", "finetune.epochs=3", "--set", "distill.batch_size=32",
        "--set", "distill.epochs=3", "--eval-every", "33", "--keep-runs", KEEP]
args = anchored.parse(ARGV)
run = quality.base_run(args)
values = {"divergence": "mse", "temperature": 5.0}
label = "plain KD, final anchored teacher frozen, MSE at T=5 (the recipe's distillation loss)"
specs = [quality._spec(args, run, f"{KEEP}/teachers/anchored-{s}", label, "frozen_mse", "none", s, values)
         for s in args.seed_list]
controls = quality.run_all(specs, args.jobs, "loss controls", args.keep_runs)
previous = json.loads((OUT / "anchored_trec_layers.json").read_text())
by = {(r["kind"], r["seed"]): r for r in previous["results"] + controls}
seeds = args.seed_list
rows = {}
for at in ("last", "best"):
    acc = lambda kind: [score(by[(kind, s)], at) for s in seeds]
    rows[at] = {
        "frozen_mse": sum(acc("frozen_mse")) / len(seeds),
        "frozen_mse - plain KD": paired_difference(acc("none"), acc("frozen_mse")),
        "anchored - frozen_mse": paired_difference(acc("frozen_mse"), acc("anchored")),
        "per seed frozen_mse": acc("frozen_mse"),
    }
out = {"label": label, "values": values, "seeds": seeds, "summary": rows,
       "results": controls}
(OUT / "anchored_trec_layers_loss_control.json").write_text(json.dumps(out, indent=2, default=str))
for at, r in rows.items():
    print(at, f"control acc {r['frozen_mse']:.4f}", "per seed", [f"{x:.4f}" for x in r["per seed frozen_mse"]])
    for k in ("frozen_mse - plain KD", "anchored - frozen_mse"):
        d = r[k]
        print(f"  {k}: {100*d['mean']:+.2f} [{100*d['ci_low']:+.2f}, {100*d['ci_high']:+.2f}] points, "
              f"detectable {100*d['detectable']:.2f}" if d["detectable"] else f"  {k}: {100*d['mean']:+.2f}")
