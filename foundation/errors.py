"""Errors that tell a user what to fix: the CLI prints their message alone,
without a traceback, and exits with their status."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad config, bad data, missing file).

    The CLI prints the message alone, without a traceback, and exits with status 2.
    """

    exit_code = 2


class ConfigError(UserError):
    """A config file is missing, malformed, or does not match its schema."""
