"""One check's outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class CheckResult:
    """`detail` says what was measured (pass), what is wrong (fail) or why the
    check could not run (skip); `remedy` says what to do about a failure."""

    check: str
    outcome: Outcome
    detail: str
    remedy: str = ""


def passed(check: str, detail: str) -> CheckResult:
    return CheckResult(check, "pass", detail)


def failed(check: str, detail: str, remedy: str) -> CheckResult:
    return CheckResult(check, "fail", detail, remedy)


def skipped(check: str, reason: str) -> CheckResult:
    return CheckResult(check, "skip", reason)
