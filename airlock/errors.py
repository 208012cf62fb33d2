"""What the airlock refuses: a file that could run code or is not what it
claims, and a version that was never brought in through it."""

from __future__ import annotations

from experiments.registry import ModelIntegrityError
from foundation import UserError


class ModelImportRefused(UserError):
    """A folder offered for import holds something that could run code or is not
    what it claims to be; the message names the file and the reason."""


class ModelNotInStoreError(ModelIntegrityError):
    """A model version was not imported into the model store, or its store copy is gone."""
