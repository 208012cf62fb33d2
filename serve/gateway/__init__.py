"""The gateway: API keys, per-key model access, quotas, request limits, audit
chain and metrics in front of the engines."""

from serve.gateway.audit import AuditLog, VerifyResult
from serve.gateway.errors import GatewayError
from serve.gateway.keys import ApiKey, KeyStore
from serve.gateway.limits import RequestLimits

__all__ = ["ApiKey", "AuditLog", "GatewayError", "KeyStore", "RequestLimits", "VerifyResult"]
