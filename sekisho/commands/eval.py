"""`sekisho eval`: Evaluate a served model version and log the result to MLflow."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sekisho.cli_common import add_command, command_group
from sekisho.cli_common import home_from_args as _home


def cmd_eval_run(args) -> int:
    """Ask an eval set (its published suites, dataset and safety probes) through an
    OpenAI-compatible endpoint and log an MLflow evaluation run linked to the model
    version. Without --base-url the version is served just for the evaluation (an
    adapter on its base) and taken down after. Answers are kept in the home as they
    arrive: run it again after an interruption and only the rest is asked."""
    from experiments.evaluation import EvalConfig
    from foundation import UserError
    from sekisho.eval_serve import evaluate_version, print_result

    cfg = EvalConfig.from_yaml(args.config)
    home = _home(args)
    config_text = Path(args.config).read_text(encoding="utf-8")
    api_key = None
    if args.base_url:
        api_key = _api_key(args)
        if not api_key:
            raise UserError(
                "eval run: no API key; set SEKISHO_API_KEY or pass --api-key-file "
                "(`sekisho keys create --name eval-NAME` makes one whose traffic the audit shows as evaluation)."
            )
    r = evaluate_version(
        cfg,
        config_text,
        args.model,
        home,
        args.base_url,
        api_key,
        args.served_as,
        args.address,
        args.judge_url,
        judge_key(args),
        log=lambda line: print(line, flush=True),
    )
    print_result(r)
    return 0


def judge_key(args) -> str | None:
    """The judge endpoint's key: --judge-key-file, else $SEKISHO_JUDGE_API_KEY, else
    None (the evaluated endpoint's key is used)."""
    from foundation import UserError

    if getattr(args, "judge_key_file", None):
        try:
            return Path(args.judge_key_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise UserError(f"--judge-key-file {args.judge_key_file}: {exc.strerror}") from None
    return os.environ.get("SEKISHO_JUDGE_API_KEY")


def add_judge_arguments(c) -> None:
    """--judge-url and --judge-key-file, shared by `eval run` and `models promote`."""
    c.add_argument(
        "--judge-url",
        help="OpenAI-compatible endpoint of the judge model (default the config's judge.base_url, else --base-url)",
    )
    c.add_argument(
        "--judge-key-file", help="file holding the judge endpoint's key (default $SEKISHO_JUDGE_API_KEY)"
    )


def promote_through_gate(args) -> int:
    """`models promote`: run the evaluations the gate needs and the store lacks (the
    candidate's, and the baseline's where a threshold compares with it), print the
    side-by-side table, then move the alias only if every gated metric passes. The
    table and an HTML page go to the candidate's eval runs (and --report FILE)."""

    from experiments.evaluation import load_gates
    from experiments.promotion import PromotionRefused, gate_report, missing_evaluations, promote
    from foundation import UserError
    from sekisho.eval_serve import eval_configs, evaluate_version, print_result

    home = _home(args)
    gates = load_gates(args.gates) if Path(args.gates).is_dir() else []
    report = None
    if not args.force:
        missing = missing_evaluations(args.name, str(args.version), args.alias, gates)
        if missing:
            configs = eval_configs(args.gates)
            api_key = _api_key(args) if args.base_url else None
            if args.base_url and not api_key:
                raise UserError(
                    "models promote --base-url: no API key; set SEKISHO_API_KEY or pass --api-key-file."
                )
            for eval_set, ref in missing:
                print(f"gate needs an evaluation of {ref} on {eval_set}: running it", flush=True)
                cfg, text = configs[eval_set]
                candidate = ref == f"{args.name}/{args.version}"
                served_as = args.served_as if candidate else args.baseline_served_as
                r = evaluate_version(
                    cfg,
                    text,
                    ref,
                    home,
                    args.base_url,
                    api_key,
                    served_as,
                    args.address,
                    args.judge_url,
                    judge_key(args),
                    log=lambda line: print(line, flush=True),
                )
                print_result(r)
        try:
            report = gate_report(args.name, str(args.version), args.alias, gates)
        except PromotionRefused as exc:
            report = exc.report
            raise
        finally:
            if report is not None and report.rows:
                print(report.table(), flush=True)
                if args.report:
                    Path(args.report).write_text(report.html(), encoding="utf-8")
                    print(f"report: {args.report}")
    p = promote(args.name, args.version, args.alias, force=args.force, reason=args.reason, gates=gates)
    how = (
        f"forced: {p.reason}"
        if p.forced
        else (f"gate passed by eval run {', '.join(p.eval_runs)}" if p.eval_runs else "alias not gated")
    )
    print(f"{p.name}@{p.alias} -> version {p.version} (was {p.previous or 'unset'}; {how})")
    return 0


def add_promote_arguments(c) -> None:
    """`models promote`'s options for running missing evaluations and the report."""
    c.add_argument(
        "--base-url",
        help="endpoint serving the versions for missing evaluations (default: serve each for it)",
    )
    c.add_argument("--api-key-file", help="file holding that endpoint's key (default $SEKISHO_API_KEY)")
    c.add_argument("--api-key", help=argparse.SUPPRESS)
    c.add_argument("--served-as", help="with --base-url: the candidate's model name there")
    c.add_argument("--baseline-served-as", help="with --base-url: the baseline version's model name there")
    c.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="without --base-url: the Ray cluster to serve on",
    )
    c.add_argument("--report", help="also write the gate's HTML report (per-category charts) to this file")
    add_judge_arguments(c)


def _api_key(args) -> str | None:
    """The endpoint's key: --api-key-file, $SEKISHO_API_KEY / $OPENAI_API_KEY, or
    --api-key (with a warning: a command line is visible to every user of the machine)."""
    import sys

    from foundation import UserError

    if args.api_key_file:
        try:
            return Path(args.api_key_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise UserError(f"--api-key-file {args.api_key_file}: {exc.strerror}") from None
    if args.api_key:
        print(
            "warning: --api-key is visible on the command line to every user of this machine; "
            "set SEKISHO_API_KEY or pass --api-key-file instead",
            file=sys.stderr,
        )
        return args.api_key
    return os.environ.get("SEKISHO_API_KEY") or os.environ.get("OPENAI_API_KEY")


def register(groups) -> None:
    ev = command_group(groups, "eval", "evaluate model versions")
    c = add_command(ev, "run", cmd_eval_run)
    c.add_argument("config", help="an eval config, e.g. configs/eval/demo_ja.yaml")
    c.add_argument("--model", required=True, help="registry reference NAME@ALIAS or NAME/VERSION")
    c.add_argument(
        "--base-url",
        help="OpenAI-compatible endpoint that serves it, e.g. http://127.0.0.1:8000/v1; "
        "without it the version is served for the evaluation and taken down after",
    )
    c.add_argument(
        "--api-key-file",
        help="file holding the endpoint's key (default $SEKISHO_API_KEY; without --base-url a temporary "
        "key is made)",
    )
    c.add_argument("--api-key", help="deprecated (visible on the command line): use $SEKISHO_API_KEY")
    c.add_argument("--served-as", help="model name the endpoint serves it under (default: the registry name)")
    c.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="without --base-url: the Ray cluster to serve it on (default: a local one "
        "started for the evaluation)",
    )
    add_judge_arguments(c)
