"""/metrics answers loopback callers and admin keys only. The suite runs in a
loopback-only namespace, so a caller from another host is made by giving the
real handler a request whose peer address is not loopback."""

from __future__ import annotations

import asyncio
import json
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request

from serve.gateway import KeyStore, RequestLimits
from serve.gateway.server import Gateway, GatewayOptions


@pytest.fixture
def gateway(tmp_path):
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    store = KeyStore(db)
    keys = {"admin": store.create("ops", ["*"], admin=True), "user": store.create("app", ["tiny"])}
    gw = Gateway(GatewayOptions(app="m", db_url=db, limits=RequestLimits()), {})
    asyncio.run(gw.refresh_keys())
    return gw, keys


def _call(gw, peer: str, key: str | None):
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = make_mocked_request("GET", "/metrics", headers=headers, transport=transport)
    return asyncio.run(gw.metrics_route(request))


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1"])
def test_loopback_callers_need_no_key(gateway, peer):
    r = _call(gateway[0], peer, None)
    assert r.status == 200 and b"sekisho_requests" in r.body


def test_other_hosts_need_an_admin_key(gateway):
    gw, keys = gateway
    for key, status in ((None, 401), ("sk-sekisho-nonsense", 401), (keys["user"], 403), (keys["admin"], 200)):
        r = _call(gw, "10.20.30.40", key)
        assert r.status == status, (key, r.status)
        if status != 200:
            assert json.loads(r.body)["error"]["message"]
