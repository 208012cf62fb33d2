"""The airlock: everything that brings software or models into the closed network,
checked on the way in.

Models: `import_model` accepts a folder of safetensors weights only (no pickle, no
code), checks every header, the tokenizer, the chat template and the architecture,
hashes every file, copies it into the content-addressed model store and registers
it with its import record; `register_trained` does the same for a training job's
output (adapter or merged weights); `load` hands a version's files to Serve or
training only after checking the store copy against that record, and refuses a
version that has none. Software: `build_bundle` writes
the offline bundle of wheels, `verify_bundle` checks it on the far side.
"""

from airlock.bundle import BundleError, build_bundle
from airlock.bundle_verify import BundleReport, verify_bundle
from airlock.errors import ModelImportRefused, ModelNotInStoreError
from airlock.file_hashes import read_manifest
from airlock.model_import import ImportedModel, ImportPolicy, import_model
from airlock.model_store import store_root
from airlock.model_verify import StoredModel, copy_checked, load, verify_all_bytes, verify_store_copy
from airlock.trained_export import register_trained

__all__ = [
    "BundleError",
    "BundleReport",
    "ImportPolicy",
    "ImportedModel",
    "ModelImportRefused",
    "ModelNotInStoreError",
    "StoredModel",
    "build_bundle",
    "copy_checked",
    "import_model",
    "load",
    "read_manifest",
    "register_trained",
    "store_root",
    "verify_all_bytes",
    "verify_bundle",
    "verify_store_copy",
]
