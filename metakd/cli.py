"""The ``metakd`` command: ``distill``, ``finetune-teacher``, ``compress`` and ``bench``."""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys

from . import __version__
from .bench import BENCHMARKS
from .config import ConfigError
from .data import DataError
from .distiller import NumericalError
from .models import ModelError

USER_ERRORS = (ConfigError, DataError, ModelError, NumericalError)


def _run_parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("config", help="run file (YAML; see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set distill.meta_update=full --set n_train=2000 (repeatable)")
    p.add_argument("--output", help="output directory (overrides the file's 'output')")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true", help="on a bad input, show the full traceback instead of one line")
    return p


def _summary(result: dict, keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {result[k]:.4f}" for k in keys if k in result)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="metakd", description="Learning-to-teach knowledge distillation.")
    parser.add_argument("--version", action="version", version=f"metakd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    distill_parser = _run_parser(sub, "distill", "distil the teacher into the student as a run file says; saves the "
                                                 "student, the teacher's adapters and metrics.json under the output "
                                                 "directory, and checkpoints in OUTPUT/checkpoint")
    distill_parser.add_argument("--resume", action="store_true",
                                help="continue from the checkpoint in OUTPUT/checkpoint (a killed or stopped run); "
                                     "an error when there is none")
    distill_parser.add_argument("--resume-if-present", action="store_true",
                                help="resume when OUTPUT holds a checkpoint, else start from the beginning")
    distill_parser.add_argument("--overwrite", action="store_true",
                                help="replace a previous run in OUTPUT (metrics.json, distilled/, checkpoints) "
                                     "instead of refusing")
    _run_parser(sub, "finetune-teacher", "fine-tune the run's teacher on its task (or train a new:ARCH teacher from "
                                         "scratch) and save it in OUTPUT/teacher, where distill picks it up")
    _run_parser(sub, "compress", "prune, recovery-distil and quantize the distilled student as the run file's "
                                 "'compress:' section says (distilling first when OUTPUT/distilled is missing); "
                                 "every stage is saved under OUTPUT/compressed and scored in OUTPUT/compression.json")
    bench = sub.add_parser("bench", help="run a benchmark (prints a table, writes results/NAME.{json,md,png})",
                           add_help=False)
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    if argv and argv[0] == "bench":
        if len(argv) < 2 or argv[1] not in BENCHMARKS:
            parser.parse_args(argv)  # prints usage / errors and exits
            return 2
        module = importlib.import_module(BENCHMARKS[argv[1]])
        return _guard(lambda: module.main(argv[2:]))
    args = parser.parse_args(argv)
    return _guard(lambda: _run_command(args), debug=args.debug)


def _guard(fn, debug: bool = False) -> int:
    try:
        return fn()
    except USER_ERRORS as exc:
        if debug:
            raise
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"metakd: error: {message}", file=sys.stderr)  # one line, no traceback (--debug shows it)
        return 2


def _run_command(args: argparse.Namespace) -> int:
    from .messages import hub_progress_bars

    with hub_progress_bars(not args.no_progress):  # Hugging Face's own bars too ("Loading weights", ...)
        return _run_command_body(args)


def _run_command_body(args: argparse.Namespace) -> int:
    from .run import RunConfig, distill, finetune_teacher

    overrides = list(args.overrides) + ([f"output={args.output}"] if args.output else [])
    run = RunConfig.from_yaml(args.config, overrides)
    if args.command == "compress":
        return _compress(run, progress=not args.no_progress)
    from .checkpoint import TrainingInterrupted

    def again(flag: str) -> str:
        return (f"metakd {args.command} {shlex.quote(args.config)}" + (f" {flag}" if flag else "")
                + "".join(f" --set {shlex.quote(o)}" for o in args.overrides)
                + (f" --output {shlex.quote(args.output)}" if args.output else ""))

    try:
        if args.command == "finetune-teacher":
            report = finetune_teacher(run, progress=not args.no_progress)
            print(f"teacher saved to {report['saved']}: {_summary(report['eval'], ('accuracy', 'f1', 'perplexity'))}")
            return 0
        result = distill(run, progress=not args.no_progress, resume=args.resume,
                         resume_if_present=args.resume_if_present, overwrite=args.overwrite)
    except TrainingInterrupted as stop:
        _end_bars()
        print(f"metakd: {stop}; continue with: {again('--resume' if args.command == 'distill' else '')}",
              file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # a second signal: stopped at once; say what the output directory really holds
        from .outputs import stopped_state

        _end_bars()
        state, continues, flag = stopped_state(run.output, args.command)
        print(f"metakd: stopped at once by a second signal; {state}; "
              f"{'continue' if continues else 'start again'} with: {again(flag)}", file=sys.stderr)
        return 130
    from .distributed import env_rank

    if env_rank() != 0:  # multi-process runs: the main process reports
        return 0
    keys = ("perplexity", "loss") if run.task == "causal_lm" else ("accuracy", "f1", "precision", "recall", "mcc")
    print(f"student ({run.distill.meta_update} meta-update, {result['steps']} steps): {_summary(result['student'], keys)}")
    print(f"teacher before -> after: {_summary(result['teacher_before'], keys[:1])} -> "
          f"{_summary(result['teacher_after'], keys[:1])}")
    if "student_generation" in result:
        print(f"generation: student {result['student_generation']['generation_tokens_per_second']:.1f} tokens/s, "
              f"teacher {result['teacher_generation']['generation_tokens_per_second']:.1f} tokens/s")
    print(f"saved to {result['saved']}; metrics in {run.output}/metrics.json")
    print(json.dumps({"train_seconds": result["train"].get("seconds"),
                      "peak_memory_bytes": result["train"].get("peak_memory_bytes")}))
    return 0


def _end_bars() -> None:
    """Close the progress bars an interruption left open, each on its own line (where it stopped),
    so the message that follows stands on its own line instead of being glued onto a bar's."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = True  # the bar's last state, then a newline (leave=False would only blank the line)
        bar.close()
    sys.stderr.flush()


def _compress(run, progress: bool) -> int:
    from .bench.report import markdown_table
    from .compress.pipeline import compress, stage_table

    report = compress(run, progress=progress)
    print(markdown_table(*stage_table(report)))
    again = report["reloaded"]
    print(f"reloaded {again['stage']} from disk: largest score difference {again['max_abs_difference']:.3g}")
    print(f"saved under {run.output}/compressed; report in {run.output}/compression.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
