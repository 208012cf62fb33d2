"""`sekisho demo`: The main job end to end."""

from __future__ import annotations

from sekisho.cli_common import add_command
from sekisho.cli_common import home_from_args as _home


def cmd_demo(args) -> int:
    """Run the main job end to end on embedded defaults."""
    from sekisho.demo import run_demo

    result = run_demo(_home(args), keep_serving=args.keep_serving, port=args.port)
    if args.keep_serving:
        import signal

        print(f"Serving at {result.base_url}; Ctrl-C to stop.", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


def register(groups) -> None:
    demo = add_command(groups, "demo", cmd_demo)
    demo.add_argument("--keep-serving", action="store_true", help="keep the endpoint up after the demo")
    demo.add_argument(
        "--port", type=int, help="HTTP port of the endpoint (default from configs/serve/demo.yaml)"
    )
