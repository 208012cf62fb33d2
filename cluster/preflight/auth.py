"""Ray token authentication is on: the dashboard (Jobs API) and the GCS refuse
a request that carries no token."""

from __future__ import annotations

import urllib.error
import urllib.request

from cluster.preflight.result import CheckResult, failed, passed

REMEDY = "start every node with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (`sekisho cluster up` does)"


def _dashboard_refuses(dashboard_url: str) -> str | None:
    """None when refused; else what answered."""
    try:
        with urllib.request.urlopen(f"http://{dashboard_url}/api/jobs/", timeout=15) as r:
            return f"the Jobs API answered {r.status} without a token"
    except urllib.error.HTTPError as exc:
        return None if exc.code in (401, 403) else f"the Jobs API answered {exc.code}"


def _gcs_refuses(gcs_address: str) -> str | None:
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(gcs_address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=15)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return None
            return f"the GCS answered {exc.code().name}"
    return "the GCS listed the nodes without a token"


def token_auth(gcs_address: str, dashboard_url: str | None) -> CheckResult:
    name = "Ray token auth"
    problems = [
        p
        for p in (_gcs_refuses(gcs_address), _dashboard_refuses(dashboard_url) if dashboard_url else None)
        if p
    ]
    if problems:
        return failed(name, "; ".join(problems), REMEDY)
    where = "GCS and Jobs API" if dashboard_url else "GCS (no dashboard)"
    return passed(name, f"{where} refuse requests without the token")
