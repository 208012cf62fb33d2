"""The Ray cluster: local bring-up with secure defaults (token auth, zero egress),
and the strict config base every package uses. Imports no other Sekisho package."""

from cluster import offline
from cluster.config_base import ConfigError, StrictConfig, UserError, describe_validation_error

__all__ = ["ConfigError", "StrictConfig", "UserError", "describe_validation_error", "offline"]
