"""Shared plumbing for benchmarks: isolated worker processes, tables, result files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..telemetry import fmt_bytes, machine_info  # fmt_bytes: re-exported for the benchmarks


def run_worker(module: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``python -m module --worker SPEC OUT`` in a fresh process and return its JSON result.

    One process per configuration keeps peak-memory figures (lifetime peak RSS) from polluting
    each other. The worker's progress bars go straight to this terminal.
    """
    with tempfile.TemporaryDirectory(prefix="metakd-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.run([sys.executable, "-m", module, "--worker", str(spec_path), str(out_path)], env=env)
        if proc.returncode != 0 or not out_path.is_file():
            raise RuntimeError(f"benchmark worker {module} failed (exit {proc.returncode}) for {spec.get('label', spec)}")
        return json.loads(out_path.read_text())


def serve_worker(paths: Sequence[str], fn) -> int:
    """The worker side of ``run_worker``: read the spec, run ``fn(spec)``, write its JSON result."""
    spec = json.loads(Path(paths[0]).read_text())
    Path(paths[1]).write_text(json.dumps(fn(spec)))
    return 0


def settings_from_args(parser, args, defaults: dict[str, Any], keys: Sequence[str],
                       minimum: dict[str, int] | None = None) -> dict[str, Any]:
    """``defaults`` with each of ``keys`` replaced by its command-line value when given; a value
    below its minimum (default 1) is a usage error naming the flag."""
    settings = dict(defaults)
    for key in keys:
        value = getattr(args, key)
        if value is not None:
            low = (minimum or {}).get(key, 1)
            if value < low:
                parser.error(f"--{key.replace('_', '-')} must be >= {low}")
            settings[key] = value
    return settings


def parse_meta_cost_args(parser, args, batch_size: int, forbidden: str | None = None) -> None:
    """Validate ``--teacher-layers`` (comma-separated ``all``/``top:k``, distinct; into
    ``args.layers_list``) and ``--meta-batch-size`` (1..``batch_size``) with ``parser.error``;
    ``forbidden``: a character no value may contain."""
    from ..config import check_teacher_layers

    args.layers_list = [x.strip() for x in args.teacher_layers.split(",") if x.strip()]
    for value in args.layers_list:
        if (forbidden and forbidden in value) or not (value == "all" or value.startswith("top:")):
            parser.error(f"--teacher-layers takes 'all' and 'top:k' values, got {value!r}")
        try:
            check_teacher_layers(value)
        except ValueError as exc:
            parser.error(f"--teacher-layers: {exc}")
    if not args.layers_list or len(set(args.layers_list)) != len(args.layers_list):
        parser.error(f"--teacher-layers must list distinct values, got {args.teacher_layers!r}")
    if args.meta_batch_size is not None and not 1 <= args.meta_batch_size <= batch_size:
        parser.error(f"--meta-batch-size must be between 1 and the batch size {batch_size}")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    cores = info.get("usable_cores") or info.get("logical_cores")
    gpus = ", ".join(info.get("gpus") or []) or "no GPU"
    mem = fmt_bytes(info.get("memory_total_bytes"))
    return f"{info.get('cpu_model', 'unknown CPU')}, {cores} cores, {mem} RAM, {gpus}; torch {info.get('torch')}"


def write_results(out_dir: str | Path, name: str, payload: dict[str, Any], table: str, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``NAME.json`` (payload + machine info) and ``NAME.md`` (table + notes); return paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = payload.setdefault("machine", machine_info())
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str))
    body = [f"# {name}", "", f"Machine: {machine_line(info)}", "", table, ""]
    body += [f"- {n}" for n in notes]
    md_path.write_text("\n".join(body) + "\n")
    return {"json": json_path, "md": md_path}


def print_report(payload: dict[str, Any], body: str, notes: Sequence[str], written: Sequence[Path | str]) -> None:
    """Print what ``write_results`` wrote: the machine, the tables, the notes and the file paths."""
    print(f"\nMachine: {machine_line(payload['machine'])}\n")
    print(body)
    print()
    for n in notes:
        print(f"- {n}")
    print(f"\nwrote {', '.join(str(w) for w in written)}")
