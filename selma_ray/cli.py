"""The ``selma-ray`` command line: the only place that parses arguments.

Every command resolves a config (preset < --config file < --set overrides) and calls the same
functions the jobs and tests call. Configuration and input errors exit with code 2 and a
message naming the field or input at fault.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from selma_ray import layout
from selma_ray.config import PRESETS, ConfigError, SelmaConfig, load_config
from selma_ray.merging.methods import METHODS
from selma_ray.runlog import configure_console
from selma_ray.storage import RunDir

EXIT_USAGE = 2
EXIT_FAILED = 1


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (local path or fsspec URI)")
    p.add_argument("--preset", choices=PRESETS, help="named preset to start from (default: tiny)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config field (repeatable), e.g. --set prompts.num_prompts=100",
    )
    p.add_argument(
        "--rehearse",
        action="store_true",
        help="rehearse the preset on CPU: tiny same-architecture stand-ins for every model, "
        "counts and sizes shrunk (same as --set rehearse=true)",
    )


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-dir", help="run directory (path or fsspec URI); default ./selma-runs/<time>"
    )
    p.add_argument(
        "--address",
        help="Ray cluster address; 'auto' = the cluster this machine runs (after `ray start`). "
        "Default: RAY_ADDRESS, else a new local Ray",
    )
    p.add_argument(
        "--redo",
        action="append",
        default=[],
        metavar="STAGE",
        help="discard a stage's outputs (and later stages') and run it again ('all': every stage)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_log_args(p, argparse.SUPPRESS)


def _add_log_args(p: argparse.ArgumentParser, default: object) -> None:
    """-v / --log-level, before or after the command (``default``: SUPPRESS on commands so
    they do not reset what was given before the command)."""
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="show every library's log lines and the Ray workers' output on the console",
    )
    p.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=default if default is argparse.SUPPRESS else None,
        help="console log level for every library (default: selma-ray's lines and errors only)",
    )


def build_parser() -> argparse.ArgumentParser:
    from selma_ray.pipeline import stage_names

    parser = argparse.ArgumentParser(
        prog="selma-ray",
        description="SELMA on Ray: skill prompts -> images -> LoRA experts -> merge -> eval.",
    )
    _add_log_args(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline's stages in order (resumes a run dir)")
    _add_config_args(run)
    _add_run_args(run)
    run.add_argument(
        "--serve", action="store_true", help="then serve the run over HTTP until interrupted"
    )
    run.add_argument(
        "--stages",
        help=f"comma-separated subset of {','.join(stage_names())} (default: all)",
    )

    prompts = sub.add_parser("prompts", help="stage 1 alone: generate skill prompts")
    _add_config_args(prompts)
    _add_run_args(prompts)
    psub = prompts.add_subparsers(dest="prompts_command")
    dedup = psub.add_parser("dedup", help="drop near-duplicate prompts (ROUGE-L, SELMA's rule)")
    dedup.add_argument("--input", required=True, help="JSONL with a 'prompt' field, or plain lines")
    dedup.add_argument("--output", required=True, help="kept prompts, same format, input order")
    dedup.add_argument("--existing", help="prompts already kept (e.g. seeds), same formats")
    dedup.add_argument("--threshold", type=float, default=0.8, help="ROUGE-L F above this = dup")

    merge = sub.add_parser("merge", help="stage 4 alone: merge the skill experts into one LoRA")
    _add_config_args(merge)
    _add_run_args(merge)
    merge.add_argument("--method", choices=list(METHODS))
    merge.add_argument(
        "--weights", help="comma-separated, one per skill in prompts.skills order (default 1/N)"
    )
    merge.add_argument("--export-fused", action="store_true", help="also save a fused pipeline")

    evaluate = sub.add_parser("evaluate", help="stage 5: evaluation")
    esub = evaluate.add_subparsers(dest="evaluate_command", required=True)
    rescore = esub.add_parser("rescore", help="re-score a saved VQA answers table (CSV/Parquet)")
    rescore.add_argument("--benchmark", choices=["dsg1k"], default="dsg1k")
    rescore.add_argument(
        "--answers",
        required=True,
        help="CSV/Parquet: item_id, question_id (or proposition_id), answer[, t2i_model|model]",
    )
    rescore.add_argument("--output", help="write the JSON report here (any fsspec path)")
    rescore.add_argument(
        "--rules",
        choices=["reference", "transitive"],
        default="reference",
        help="DSG zeroing: reference = the DSG authors' script (default); transitive = any "
        "zeroed ancestor zeroes a question, dirty dependency cells keep their integers",
    )
    rescore.add_argument(
        "--items",
        choices=["auto", "category", "answered"],
        default="auto",
        help="items scored: category = every item of each category with answers, unanswered "
        "ones 0 (the DSG authors' script); answered = the items the table answers (a run's "
        "eval/answers.parquet, which covers eval.max_items); auto (default) = answered for a "
        "table with a benchmark column, else category",
    )

    sv = sub.add_parser("serve", help="serve a run (base, merged, experts): OpenAI images API")
    sv.add_argument("--run-dir", required=True, help="run directory (path or fsspec URI)")
    sv.add_argument("--host", help="bind address (default: the run's serve.host, 127.0.0.1)")
    sv.add_argument("--port", type=int, help="port (default: the run's serve.port, 8000)")
    sv.add_argument(
        "--address",
        help="Ray cluster address ('auto': this machine's cluster); default: RAY_ADDRESS, "
        "else a new local Ray",
    )
    sv.add_argument(
        "--arg",
        dest="serve_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="build_app argument, e.g. serve.pool.max_size=2, serve.pool.gpus=1, "
        "serve.auth_token_env=SELMA_TOKEN, torch_threads=4",
    )

    status = sub.add_parser(
        "status", help="where a run stands: each stage's state, progress, ETA; works mid-run"
    )
    status.add_argument(
        "--run-dir", help="run directory (path or fsspec URI); default: selma-runs/latest"
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    report = sub.add_parser(
        "report",
        help="rebuild eval/report.html and the paper's comparison table from a run's eval results",
    )
    report.add_argument("--run-dir", required=True, help="run directory (path or fsspec URI)")
    report.add_argument(
        "--table",
        action="store_true",
        help="print the comparison table (base / joint / merged on every metric, 95%% intervals) "
        "and the skill matrix",
    )
    report.add_argument(
        "--format", choices=("md", "csv"), default="md", help="--table as Markdown or CSV"
    )
    report.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=RUN_DIR",
        help="add another run's merged model as a row (e.g. ground-truth=s3://b/runs/gt); "
        "repeatable",
    )

    models = sub.add_parser("models", help="model utilities")
    msub = models.add_subparsers(dest="models_command", required=True)
    tiny = msub.add_parser("make-tiny", help="write tiny offline SD and chat-LLM models to DIR")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)

    config = sub.add_parser("config", help="show or check a resolved config")
    csub = config.add_subparsers(dest="config_command", required=True)
    for name, text in (("show", "print the resolved config as YAML"), ("validate", "check only")):
        c = csub.add_parser(name, help=text)
        _add_config_args(c)
    return parser


def resolve_config(args: argparse.Namespace) -> SelmaConfig:
    overrides = list(args.overrides)
    if getattr(args, "rehearse", False):
        overrides.append("rehearse=true")
    if getattr(args, "address", None):
        overrides.append(f"ray.address={args.address}")
    if getattr(args, "verbose", False):
        overrides.append("ray.log_to_driver=true")
    return load_config(args.config, preset=args.preset, overrides=overrides)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a run goes, SIGTERM (``ray job stop``, a scheduler's preemption) ends it as Ctrl-C
    does: the running stage is marked failed, the driver log is written out (uploaded for a run
    on object storage), engines are closed and the Ray session ends; Python's default would end
    the process on the spot. Only in the main thread (where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_run(args: argparse.Namespace, stages: list[str] | None) -> int:
    from selma_ray.pipeline import run_pipeline

    cfg = resolve_config(args)
    try:
        with sigterm_as_interrupt():
            summary = run_pipeline(
                cfg,
                args.run_dir,
                stages=stages,
                redo=args.redo,
                progress=not args.no_progress,
            )
    except Exception as e:
        stage = getattr(e, "selma_stage", None)
        if stage is None or isinstance(e, ConfigError):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        first = first if len(first) <= 300 else first[:297] + "..."
        where = getattr(e, "selma_log", None)
        print(
            f"selma-ray: stage {stage} failed: {type(e).__name__}: {first}\n"
            f"  full traceback: {where or 'the log above'}\n"
            "  finished work is kept; rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"\nrun directory: {summary.run_dir}")
    for name in summary.skipped:
        print(f"  {name}: already done with this config (skipped)")
    for name in summary.ran:
        state = "incomplete" if name in summary.incomplete else "done"
        print(f"  {name}: {state} in {summary.seconds[name]:.1f} s")
    for note in summary.notes:
        print(f"  note: {note}")
    rd = RunDir(summary.run_dir)
    print(f"manifest: {rd.url(*layout.manifest())}")
    if rd.exists(*layout.eval_report_html()):
        print(f"report: {rd.url(*layout.eval_report_html())}")
    if rd.exists(*layout.merged_lora()):
        print(f"serve it: selma-ray serve --run-dir {summary.run_dir}")
    if getattr(args, "serve", False):
        from selma_ray.distributed.serve import serve_run_dir

        serve_run_dir(summary.run_dir, address=args.address, blocking=True)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from selma_ray.status import format_status, run_status, status_json

    uri = args.run_dir or "selma-runs/latest"
    if args.run_dir is None and not os.path.exists(uri):
        msg = "no selma-runs/latest here: give --run-dir (a path or fsspec URI)"
        raise ConfigError(msg)
    if args.run_dir is None:
        uri = os.path.realpath(uri)  # the run it points at now, as the run was named
    st = run_status(uri)
    print(status_json(st) if args.json else format_status(st))
    return 0


def _cmd_dedup(args: argparse.Namespace) -> int:
    from selma_ray.prompts.dedup import dedup_file

    counts = dedup_file(args.input, args.output, args.existing, threshold=args.threshold)
    print(json.dumps(counts))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from selma_ray.evaluation.report import build_report

    compare: dict[str, str] = {}
    for text in args.compare:
        label, sep, uri = text.partition("=")
        if not sep or not label.strip() or not uri.strip():
            msg = f"--compare {text!r}: expected LABEL=RUN_DIR (e.g. ground-truth=runs/gt)"
            raise ConfigError(msg)
        compare[label.strip()] = uri.strip()
    import fsspec

    paths = build_report(args.run_dir, compare)
    if args.table:
        key = "table_md" if args.format == "md" else "table_csv"
        with fsspec.open(paths[key], "r") as f:
            print(f.read(), end="")
        return 0
    print(
        f"report: {paths['html']}\ncontact sheet: {paths['contact_sheet']}\n"
        f"table: {paths['table_md']} ({paths['table_csv']})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_console(verbose=args.verbose, level=args.log_level)
    try:
        if args.command == "run":
            stages = (
                [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
            )
            return _cmd_run(args, stages)
        if args.command == "prompts":
            if args.prompts_command == "dedup":
                return _cmd_dedup(args)
            return _cmd_run(args, ["prompts"])
        if args.command == "merge":
            if args.method:
                args.overrides.append(f"merge.method={args.method}")
            if args.weights:
                args.overrides.append(f"merge.weights=[{args.weights}]")
            if args.export_fused:
                args.overrides.append("merge.export_fused=true")
            # merging is cheap and the point of the command is to (re)do it
            args.redo.append("merge")
            return _cmd_run(args, ["merge"])
        if args.command == "evaluate":
            from selma_ray.evaluation.rescore import format_table, rescore_file

            report = rescore_file(
                args.benchmark, args.answers, args.output, rules=args.rules, items=args.items
            )
            print(format_table(report))
            return 0
        if args.command == "serve":
            from selma_ray.distributed.serve import serve_run_dir

            extra = {}
            for kv in args.serve_args:
                if "=" not in kv:
                    raise ConfigError(f"--arg {kv!r}: expected KEY=VALUE")
                key, value = kv.split("=", 1)
                own = {"host": "--host", "port": "--port", "run_dir": "--run-dir"}
                if key in own or key in ("address", "blocking", "name", "route_prefix"):
                    flag = own.get(key, "the command's own options")
                    msg = f"--arg {key}=...: not a serve argument; use {flag}"
                    raise ConfigError(msg)
                extra[key] = value
            serve_run_dir(
                args.run_dir, host=args.host, port=args.port, address=args.address,
                blocking=True, **extra,
            )  # fmt: skip
            return 0
        if args.command == "status":
            return _cmd_status(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "models":
            from selma_ray.models.tiny import make_tiny

            paths = make_tiny(args.dir, seed=args.seed)
            for kind, path in paths.items():
                print(f"{kind}: {path}")
            return 0
        if args.command == "config":
            cfg = resolve_config(args)
            if args.config_command == "show":
                print(cfg.to_yaml(), end="")
            else:
                print("config is valid")
            return 0
    except ConfigError as e:
        print(f"selma-ray: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError) as e:
        print(f"selma-ray: {e}", file=sys.stderr)
        return EXIT_USAGE
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
