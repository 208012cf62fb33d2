"""MLflow: the tracking store, the registry (versions, aliases, lineage) and
the run logger that training uses."""

from experiments.registry import (ModelIntegrityError, ModelNotFoundError, ResolvedModel,
                                  dir_sha256, get_version, register_folder, resolve, set_alias)
from experiments.run_logger import RunLogger, flatten
from experiments.tracking import sekisho_home, tracking_uri, use_store

__all__ = ["ModelIntegrityError", "ModelNotFoundError", "ResolvedModel", "RunLogger",
           "dir_sha256", "flatten", "get_version", "register_folder", "resolve",
           "sekisho_home", "set_alias", "tracking_uri", "use_store"]
