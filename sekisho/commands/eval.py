"""`sekisho eval`: Evaluate a served model version and log the result to MLflow."""

from __future__ import annotations

import os
from pathlib import Path

from sekisho.cli_common import add_command, command_group
from sekisho.cli_common import home_from_args as _home


def cmd_eval_run(args) -> int:
    """Ask an eval set (and its safety probes) through an OpenAI-compatible endpoint
    and log an MLflow evaluation run linked to the model version. Without --base-url
    the version is served just for the evaluation (an adapter on its base) and
    taken down after."""
    from experiments.evaluation import EvalConfig, run_eval
    from foundation import UserError

    cfg = EvalConfig.from_yaml(args.config)
    home = _home(args)
    config_text = Path(args.config).read_text(encoding="utf-8")
    if not args.base_url:
        from sekisho.eval_serve import serve_for_eval

        with serve_for_eval(args.model, home, args.served_as, args.address) as tmp:
            base = f" on {tmp.base_version}" if tmp.base_version else ""
            print(
                f"serving {tmp.version}{base} as {tmp.served_as!r} at {tmp.base_url} "
                f"(temporary app {tmp.app_name}, key {tmp.key_name})",
                flush=True,
            )
            r = run_eval(
                cfg, tmp.version, tmp.base_url, tmp.api_key, served_as=tmp.served_as, config_text=config_text
            )
        print(f"stopped {tmp.app_name} and revoked key {tmp.key_name}")
    else:
        api_key = _api_key(args)
        if not api_key:
            raise UserError(
                "eval run: no API key; set SEKISHO_API_KEY or pass --api-key-file "
                "(`sekisho keys create` makes one)."
            )
        r = run_eval(
            cfg, args.model, args.base_url, api_key, served_as=args.served_as, config_text=config_text
        )
    print(f"evaluated {r.model_version} (served as {r.served_as}) on {r.eval_set}: run {r.run_id}")
    for k, v in sorted(r.metrics.items()):
        if not k.startswith("category."):
            print(f"  {k:24} {v:.4f}")
    return 0


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
