"""The airlock: everything that brings software or models into the closed network,
checked on the way in.

Models: `import_model` accepts a folder of safetensors weights only (no pickle, no
code), checks every header, the tokenizer, the chat template and the architecture,
hashes every file, copies it into the content-addressed model store and registers
it with its import record; `load` hands a version's files to Serve or training only
after checking the store copy against that record. Software: `build_bundle` writes
the offline bundle of wheels, `verify_bundle` checks it on the far side.
"""

from airlock.bundle import BundleError, build_bundle
from airlock.bundle_verify import BundleReport, verify_bundle
from airlock.errors import ModelImportRefused, ModelNotInStoreError
from airlock.file_hashes import read_manifest
from airlock.model_import import ImportedModel, ImportPolicy, import_model
from airlock.model_store import store_root
from airlock.model_verify import StoredModel, load, verify_all_bytes, verify_store_copy

__all__ = [
    "BundleError",
    "BundleReport",
    "ImportPolicy",
    "ImportedModel",
    "ModelImportRefused",
    "ModelNotInStoreError",
    "StoredModel",
    "build_bundle",
    "import_model",
    "load",
    "read_manifest",
    "store_root",
    "verify_all_bytes",
    "verify_bundle",
    "verify_store_copy",
]
