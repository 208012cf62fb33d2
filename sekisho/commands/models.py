"""`sekisho models`: The model registry."""

from __future__ import annotations

from sekisho.cli_common import add_command, command_group
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
    """Show one version (NAME, NAME@ALIAS or NAME/VERSION) with its lineage, its
    evaluations, and the history of the model's aliases."""
    import json
    import sys

    from mlflow import MlflowClient

    from experiments import alias_history, alias_log, get_version, promotion_log

    _home(args)
    ref = args.ref
    if "@" not in ref and "/" not in ref:
        ref = f"{ref}/{_latest_version(ref)}"
    mv = get_version(ref)
    print(f"{mv.name} version {mv.version} (run {mv.run_id})\nsource: {mv.source}")
    print(f"aliases: {', '.join(sorted(getattr(mv, 'aliases', None) or [])) or '-'}")
    print("lineage:")
    for k, v in sorted(mv.tags.items()):
        if not k.startswith("sekisho."):
            print(f"  {k}: {v}")
    for k, v in sorted(mv.tags.items()):
        if k.startswith("sekisho.eval."):
            print(f"evaluation {k.removeprefix('sekisho.eval.')}: run {v}")
        elif k.startswith("sekisho.forced."):
            print(f"forced to {k.removeprefix('sekisho.forced.')}: {v}")
    rm = MlflowClient().get_registered_model(mv.name)
    for bad in alias_log.ignored(mv.name, rm):
        print(f"warning: alias history of {mv.name}: ignored tag {bad.key!r}: {bad.why}", file=sys.stderr)
    for alias in sorted(rm.aliases):
        history = alias_history(mv.name, alias)
        print(
            f"alias {alias} -> v{rm.aliases[alias]}; history: "
            f"{' -> '.join('v' + v for v in history) or '(set outside promote)'}"
        )
    for event in promotion_log(mv.name)[-10:]:
        print("  " + json.dumps(event, ensure_ascii=False))
    return 0


def cmd_models_promote(args) -> int:
    """Point an alias at a version through the promotion gate (evaluations of that
    version meeting the thresholds in configs/eval/, absolute or against the version
    the alias points at now; missing ones are run first and the side-by-side table
    is shown), or with --force --reason."""
    from sekisho.commands.eval import promote_through_gate

    return promote_through_gate(args)


def cmd_models_rollback(args) -> int:
    """Move an alias back to the version it pointed at before the last promotion."""
    from experiments import rollback

    _home(args)
    p = rollback(args.name, args.alias)
    print(f"{p.name}@{p.alias} -> version {p.version} (rolled back from {p.previous})")
    return 0


def cmd_models_import(args) -> int:
    """Check a model folder (safetensors only, no code, headers, hashes, tokenizer,
    chat template, vLLM architecture), copy it into the model store and register it."""
    from airlock import import_model

    _home(args)
    m = import_model(args.dir, args.name, manifest=args.manifest, exclude=args.exclude, alias=args.alias)
    h = m.hashes
    print(
        f"imported {m.name} version {m.version} ({', '.join(m.architectures)}): "
        f"{len(h.files)} files, {h.total_bytes / 1e6:.1f} MB hashed at {h.mb_per_s:.0f} MB/s"
    )
    print(f"store: {m.path}\ncontent_sha256: {m.content_sha256}")
    for rel, why in m.left_out.items():
        print(f"left out: {rel} ({why})")
    if m.documents:
        print(f"documents kept with the import run, not in the store: {', '.join(m.documents)}")
    if m.alias:
        print(f"{m.name}@{m.alias} -> version {m.version}")
    return 0


def cmd_models_verify(args) -> int:
    """Re-hash every file of a stored model (NAME, NAME@ALIAS or NAME/VERSION) and
    compare it with the store record (written by the import or the training job)."""
    from airlock import verify_all_bytes
    from experiments import get_version

    _home(args)
    ref = args.ref
    if "@" not in ref and "/" not in ref:
        ref = f"{ref}/{_latest_version(ref)}"
    stored = verify_all_bytes(get_version(ref))
    print(
        f"{stored.ref}: OK, {stored.files} files, {stored.total_bytes / 1e6:.1f} MB match the "
        f"store record from {stored.origin} (content_sha256 {stored.content_sha256})"
    )
    return 0


def _latest_version(name: str) -> str:
    from mlflow import MlflowClient

    from experiments import ModelNotFoundError, use_store

    use_store()
    if "'" in name:
        raise ModelNotFoundError(f"{name!r}: a model name cannot contain a quote.")
    versions = [int(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'")]
    if not versions:
        raise ModelNotFoundError(f"model {name!r} has no versions in the registry.")
    return str(max(versions))


def register(groups) -> None:
    models = command_group(groups, "models", "the model registry")
    c = add_command(models, "list", cmd_models_list)
    c = add_command(models, "show", cmd_models_show)
    c.add_argument("ref", help="NAME (latest version), NAME@ALIAS or NAME/VERSION")
    c = add_command(models, "promote", cmd_models_promote)
    c.add_argument("name", help="registered model name")
    c.add_argument("version", help="the version the alias is to point at")
    c.add_argument("--alias", default="production", help="alias to move (default production)")
    c.add_argument("--force", action="store_true", help="skip the gate (needs --reason, which is recorded)")
    c.add_argument("--reason", help="why the gate is skipped")
    c.add_argument(
        "--gates", default="configs/eval", help="folder of eval configs whose `gate:` sections apply"
    )
    from sekisho.commands.eval import add_promote_arguments

    add_promote_arguments(c)
    c = add_command(models, "rollback", cmd_models_rollback)
    c.add_argument("name", help="registered model name")
    c.add_argument("--alias", default="production", help="alias to move back (default production)")
    c = add_command(models, "import", cmd_models_import)
    c.add_argument("dir", help="the model folder as carried in (e.g. made by `hf download --local-dir`)")
    c.add_argument("--name", required=True, help="registered model name")
    c.add_argument("--manifest", help="SHA256SUMS (sha256sum output) every stored file must match")
    c.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out files whose path in the folder matches, e.g. 'original/*' (repeatable)",
    )
    c.add_argument("--alias", help="point this alias (e.g. production) at the new version")
    c = add_command(models, "verify", cmd_models_verify)
    c.add_argument("ref", help="NAME (latest version), NAME@ALIAS or NAME/VERSION")
    from sekisho.commands.models_export import add_export

    add_export(models)
