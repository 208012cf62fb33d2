"""`sekisho models export`: a LoRA adapter version merged into its base, stored and
registered as a new version that serves without LoRA."""

from __future__ import annotations

from sekisho.cli_common import add_command
from sekisho.cli_common import home_from_args as _home


def cmd_models_export(args) -> int:
    """Merge a LoRA adapter version into the base version it was trained on (PEFT
    merge_and_unload) and register the merged weights as a new version of the base's
    name (or --as NAME), with the adapter and base versions as lineage."""
    from foundation import UserError
    from train.merge import export_merged

    if not args.merge:
        raise UserError(
            f"models export {args.ref}: say how to export it; --merge (the adapter merged "
            f"into its base) is the one export there is."
        )
    _home(args)
    r = export_merged(args.ref, register_as=args.register_as)
    s = r.stored
    print(f"merged {r.adapter_ref} into {r.base_ref} (MLflow run {r.run_id})")
    print(f"registered {s.name} version {s.version}: {s.files} files, {s.total_bytes / 1e6:.1f} MB")
    print(f"store: {s.path}\ncontent_sha256: {s.content_sha256}")
    print(
        f"serve it as a base model (no LoRA): `source: registry:{s.ref}`; "
        f"`sekisho models promote {s.name} {s.version} --alias production` to make it the one served"
    )
    return 0


def add_export(models) -> None:
    """`models export` under the `models` group."""
    c = add_command(models, "export", cmd_models_export)
    c.add_argument("ref", help="the adapter version, NAME/VERSION or NAME@ALIAS")
    c.add_argument(
        "--merge",
        action="store_true",
        help="merge the LoRA adapter into its base (the version in its base_model_version tag)",
    )
    c.add_argument(
        "--as",
        dest="register_as",
        metavar="NAME",
        help="registered name of the merged version (default: the base model's name)",
    )
