"""`sekisho models`: The model registry."""

from __future__ import annotations


from sekisho.cli_common import home_from_args as _home


def cmd_models_list(args) -> int:
    """List registered models with their aliases and latest version."""
    from mlflow import MlflowClient

    from experiments import use_store

    _home(args)
    use_store()
    for rm in MlflowClient().search_registered_models():
        aliases = ", ".join(f"{a}->v{v}" for a, v in sorted(rm.aliases.items())) if rm.aliases else "-"
        latest = max((int(v.version) for v in rm.latest_versions), default=0)
        print(f"{rm.name:32} kind={rm.tags.get('kind', '?'):8} latest=v{latest:<4} aliases: {aliases}")
    return 0


def cmd_models_show(args) -> int:
    """Show one version (NAME@ALIAS or NAME/VERSION) with its lineage tags."""
    from experiments import get_version

    _home(args)
    mv = get_version(args.ref)
    print(f"{mv.name} version {mv.version} (run {mv.run_id})\nsource: {mv.source}")
    for k, v in sorted(mv.tags.items()):
        print(f"  {k}: {v}")
    return 0


def cmd_models_promote(args) -> int:
    """Point an alias at a version."""
    from experiments import get_version, set_alias

    _home(args)
    get_version(f"{args.name}/{args.version}")
    set_alias(args.name, args.alias, args.version)
    print(f"{args.name}@{args.alias} -> version {args.version}")
    return 0


def register(groups) -> None:
    models = groups.add_parser("models", help="the model registry").add_subparsers(
        dest="command", required=True, metavar="COMMAND")
    c = models.add_parser("list", help=cmd_models_list.__doc__)
    c.set_defaults(fn=cmd_models_list)
    c = models.add_parser("show", help=cmd_models_show.__doc__)
    c.add_argument("ref")
    c.set_defaults(fn=cmd_models_show)
    c = models.add_parser("promote", help=cmd_models_promote.__doc__)
    c.add_argument("name")
    c.add_argument("version")
    c.add_argument("--alias", default="production")
    c.set_defaults(fn=cmd_models_promote)
