"""The alias record read strictly, on real MLflow stores (the embedded SQLite one and
PostgreSQL used directly): tags written by hand through MLflow's own API under
`sekisho.event.` (a key that sorts after every real event, a value that is not
JSON or lacks fields, a version that was never registered) are left out of the
replay and reported, so they can neither pin an alias nor break `rollback`; a
record written by Sekisho replays as before."""

from __future__ import annotations

import json
import secrets
import time


def tag(name: str, key: str, value) -> None:
    """Write a registered-model tag as anyone with EDIT on the model can, bypassing Sekisho."""
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_tag(name, key, value if isinstance(value, str) else json.dumps(value))


def well_formed_key(stamp_ns: int | None = None) -> str:
    return f"sekisho.event.{stamp_ns or time.time_ns():020d}.{secrets.token_hex(4)}"


def production(name: str) -> str:
    from experiments import get_version

    return str(get_version(f"{name}@production").version)


def test_a_tag_sorting_after_every_event_does_not_pin_the_alias(model):
    from experiments import alias_history, promote, rollback
    from experiments.alias_log import ignored

    for v in ("1", "2"):
        promote(model, v, force=True, reason=f"v{v}")
    pin = "sekisho.event.zzz"
    tag(model, pin, {"action": "promote", "alias": "production", "version": "2"})

    p = rollback(model)
    assert (p.previous, p.version) == ("2", "1")
    assert production(model) == "1"
    assert alias_history(model, "production") == ["1"]
    assert [(i.key, i.why) for i in ignored(model)] == [
        (pin, "the key is not sekisho.event.<20 digits>.<8 hex digits>")
    ]


def test_malformed_values_are_ignored_and_reported(model, capsys):
    from experiments import alias_history, promote, promotion_log, rollback
    from experiments.alias_log import ignored
    from sekisho.cli import main

    promote(model, "1", force=True, reason="first")
    cases = [
        ("not json {", "the value is not JSON"),
        ([{"action": "promote"}], "the value is JSON list, not an object"),
        ({"action": "delete", "alias": "production", "version": "1"}, "action 'delete' is not one of"),
        ({"action": "promote", "alias": 7, "version": "2"}, "alias 7 is not a non-empty string"),
        ({"action": "promote", "alias": "production"}, "version None of a 'promote' event is not"),
        ({"action": "set", "alias": "production", "version": 2}, "version 2 of a 'set' event is not"),
        ({"action": "observed", "alias": "production", "version": "../1"}, "version '../1' of"),
        ({"action": "promote", "alias": "production", "version": "99"}, "version 99 is not registered"),
    ]
    keys = []
    for value, _ in cases:
        keys.append(well_formed_key())
        tag(model, keys[-1], value)
    future = well_formed_key(time.time_ns() + 2 * 86_400 * 10**9)
    tag(model, future, {"action": "promote", "alias": "production", "version": "3"})
    short = f"sekisho.event.{time.time_ns()}.{secrets.token_hex(4)}"  # 19 digits
    tag(model, short, {"action": "promote", "alias": "production", "version": "3"})

    reported = {i.key: i.why for i in ignored(model)}
    assert set(reported) == {*keys, future, short}
    for key, (_, why) in zip(keys, cases, strict=True):
        assert reported[key].startswith(why), (key, reported[key], why)
    assert "more than a day after" in reported[future]
    assert "20 digits" in reported[short]
    assert alias_history(model, "production") == ["1"]
    assert [e["version"] for e in promotion_log(model)] == ["1"]

    # moves still work and land where the record says
    promote(model, "2", force=True, reason="second")
    assert production(model) == "2"
    assert rollback(model).version == "1" and production(model) == "1"

    assert main(["models", "show", f"{model}/1"]) == 0
    out, err = capsys.readouterr()
    assert "alias production -> v1; history: v1" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning: alias history")]
    assert len(warnings) == len(keys) + 2
    for key in (*keys, future, short):
        assert sum(repr(key) in line for line in warnings) == 1


def test_a_record_written_by_sekisho_replays_unchanged(model):
    """promote, an outside move through set_alias, rollback, and an event written in
    Sekisho's exact form by another client: all count, nothing is reported."""
    from experiments import alias_history, promote, promotion_log, rollback, set_alias
    from experiments.alias_log import ignored, steps

    promote(model, "1", force=True, reason="a")
    promote(model, "2", force=True, reason="b")
    set_alias(model, "production", "3")
    rollback(model)
    tag(model, well_formed_key(), {"action": "promote", "alias": "production", "version": "3"})
    assert alias_history(model, "production") == ["1", "2", "3"]
    assert [(s.event["action"], s.previous, s.version) for s in steps(model, "production")] == [
        ("promote", None, "1"),
        ("promote", "1", "2"),
        ("set", "2", "3"),
        ("rollback", "3", "2"),
        ("promote", "2", "3"),
    ]
    assert ignored(model) == []
    assert [e["action"] for e in promotion_log(model)] == ["promote", "promote", "set", "rollback", "promote"]
    assert rollback(model).version == "2" and production(model) == "2"
