"""How a served adapter names the version that answers (the gateway lists it as
`sekisho_version`; audit records and the evaluation's judge identity carry it)."""

from __future__ import annotations

import pytest

from serve.follow import ServedAdapter


@pytest.mark.parametrize(
    ("ref", "version", "path", "named"),
    [
        ("judge@production", "3", "/store/judge/3", "judge/3"),  # an alias followed
        ("judge/3", "3", "/store/judge/3", "judge/3"),  # a version pinned: not judge/3/3
        ("judge-v1/12", "12", "/store/judge-v1/12", "judge-v1/12"),
        (None, None, "/adapters/local", "/adapters/local"),  # a folder: its path
    ],
)
def test_version_ref_names_each_version_once(ref, version, path, named):
    adapter = ServedAdapter(served="judge", ref=ref, version=version, sha256="0" * 64, path=path)
    assert adapter.version_ref == named
    assert adapter.route()["version"] == named
