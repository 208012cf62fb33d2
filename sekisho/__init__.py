"""Sekisho: the CLI and the workflows that cross packages (the demo)."""

from sekisho.imports import pin

pin()
