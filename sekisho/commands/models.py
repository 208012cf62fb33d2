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


def cmd_models_import(args) -> int:
    """Check a model folder (safetensors only, no code, headers, hashes, tokenizer,
    chat template, vLLM architecture), copy it into the model store and register it."""
    from experiments import import_model

    _home(args)
    m = import_model(args.dir, args.name, manifest=args.manifest)
    h = m.hashes
    print(f"imported {m.name} version {m.version} ({', '.join(m.architectures)}): "
          f"{len(h.files)} files, {h.total_bytes / 1e6:.1f} MB hashed at {h.mb_per_s:.0f} MB/s")
    print(f"store: {m.path}\ncontent_sha256: {m.content_sha256}")
    return 0


def cmd_models_verify(args) -> int:
    """Re-hash every file of a stored model (NAME, NAME@ALIAS or NAME/VERSION) and
    compare it with what import recorded."""
    from experiments import get_version, verify_all_bytes

    _home(args)
    ref = args.ref
    if "@" not in ref and "/" not in ref:
        ref = f"{ref}/{_latest_version(ref)}"
    stored = verify_all_bytes(get_version(ref))
    print(f"{stored.ref}: OK, {stored.files} files, {stored.total_bytes / 1e6:.1f} MB match the "
          f"import record (content_sha256 {stored.content_sha256})")
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
    c = models.add_parser("import", help=cmd_models_import.__doc__)
    c.add_argument("dir", help="the model folder as carried in")
    c.add_argument("--name", required=True, help="registered model name")
    c.add_argument("--manifest", help="SHA256SUMS (sha256sum output) every file must match")
    c.set_defaults(fn=cmd_models_import)
    c = models.add_parser("verify", help=cmd_models_verify.__doc__)
    c.add_argument("ref", help="NAME (latest version), NAME@ALIAS or NAME/VERSION")
    c.set_defaults(fn=cmd_models_verify)
