"""The base every Sekisho package stands on: strict configs, errors that tell a
user what to fix, the Sekisho home, the zero-egress switches, and the small
idioms (hashing files, free ports, loopback checks) written once. Imports no
other Sekisho package."""

from foundation import offline
from foundation.config import StrictConfig, describe_validation_error
from foundation.errors import ConfigError, UserError
from foundation.home import sekisho_home

__all__ = ["ConfigError", "StrictConfig", "UserError", "describe_validation_error", "offline", "sekisho_home"]
