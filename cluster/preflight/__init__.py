"""Preflight: `sekisho cluster doctor` checks a running cluster against its inventory.

Each check passes, fails with a remedy, or is skipped with a reason (on a CPU
machine most GPU checks skip). The checks run as Ray tasks pinned to each node,
so they see what the cluster's own processes see.
"""

from cluster.preflight.result import CheckResult
from cluster.preflight.run import run_doctor

__all__ = ["CheckResult", "run_doctor"]
