"""Ray Serve: apps built from config and registry aliases, one vLLM engine per
replica, behind the gateway that is the only HTTP entry point."""

from serve.builder import ResolvedApp, build_app, deploy, resolve_app
from serve.config import AdapterSpec, EngineSettings, ModelSpec, ServeAppConfig

__all__ = [
    "AdapterSpec",
    "EngineSettings",
    "ModelSpec",
    "ResolvedApp",
    "ServeAppConfig",
    "build_app",
    "deploy",
    "resolve_app",
]
