"""MLflow: the tracking store, the registry (versions, aliases, lineage), the run
logger that training uses, evaluation, and promotion with its gate and rollback.
Models enter the registry through the airlock (`airlock.import_model`)."""

from experiments.comparison import Comparison, compare_runs
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
    ModelIntegrityError,
    ModelNotFoundError,
    ResolvedModel,
    dir_sha256,
    get_version,
    register_folder,
    resolve,
    set_alias,
)
from experiments.run_logger import RunLogger, flatten
from experiments.tracking import tracking_uri, use_store
from experiments.tracking_server import TrackingServer, TrackingServerConfig, start_server

__all__ = [
    "Comparison",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "Promotion",
    "PromotionRefused",
    "ResolvedModel",
    "RunLogger",
    "TrackingServer",
    "TrackingServerConfig",
    "alias_history",
    "check_gate",
    "compare_runs",
    "dir_sha256",
    "flatten",
    "get_version",
    "promote",
    "promotion_log",
    "register_folder",
    "resolve",
    "rollback",
    "set_alias",
    "start_server",
    "tracking_uri",
    "use_store",
]
