"""MLflow: the tracking store, the registry (versions, aliases, lineage), the run
logger that training uses, and the airlock that imports open models into the
content-addressed model store."""

from experiments.comparison import Comparison, compare_runs
from experiments.file_hashes import read_manifest
from experiments.model_import import ImportedModel, ImportPolicy, import_model
from experiments.model_store import store_root
from experiments.model_verify import StoredModel, verify_all_bytes, verify_store_copy
from experiments.promotion import (
                                  Promotion,
                                  PromotionRefused,
                                  alias_history,
                                  check_gate,
                                  promote,
                                  promotion_log,
                                  rollback,
)
from experiments.registry import (
                                  ModelImportRefused,
                                  ModelIntegrityError,
                                  ModelNotFoundError,
                                  ModelNotInStoreError,
                                  ResolvedModel,
                                  dir_sha256,
                                  get_version,
                                  load,
                                  register_folder,
                                  resolve,
                                  set_alias,
)
from experiments.run_logger import RunLogger, flatten
from experiments.tracking import sekisho_home, tracking_uri, use_store
from experiments.tracking_server import TrackingServer, TrackingServerConfig, start_server

__all__ = ["ImportPolicy", "ImportedModel", "ModelImportRefused", "ModelIntegrityError",
           "ModelNotFoundError", "ModelNotInStoreError", "ResolvedModel", "RunLogger",
           "StoredModel", "dir_sha256", "flatten", "get_version", "import_model", "load",
           "read_manifest", "register_folder", "resolve", "sekisho_home", "set_alias",
           "store_root", "tracking_uri", "use_store", "verify_all_bytes", "verify_store_copy"]
__all__ += ["Promotion", "PromotionRefused", "alias_history", "check_gate", "promote",
            "promotion_log", "rollback"]
__all__ += ["Comparison", "compare_runs"]
__all__ += ["TrackingServer", "TrackingServerConfig", "start_server"]
