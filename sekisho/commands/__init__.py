"""One module per command group; each exposes `register(groups)`.

Add a group by adding a module here and its name to GROUPS."""

GROUPS = [
    "demo",
    "config",
    "data",
    "train",
    "serve",
    "chat",
    "models",
    "keys",
    "audit",
    "cluster",
    "eval",
    "runs",
    "bundle",
    "tracking",
]
