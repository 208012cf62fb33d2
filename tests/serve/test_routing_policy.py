"""The router's choice, without engines: the prefix index (chained block
hashes, LRU-aged, published and merged between gateways), adapter affinity,
and the bound on imbalance that keeps affinity from piling work on one replica."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from serve.gateway.context import ModelRoute
from serve.gateway.prefix_index import AdapterIndex, PrefixIndex, block_hashes, prompt_text
from serve.gateway.route_metrics import RouteMetrics
from serve.gateway.router import Router, RoutingOptions
from serve.gateway.routing import Upstreams

DEP = "engine-base"
A, B = "http://10.0.0.1:9000", "http://10.0.0.2:9000"
ROUTE = ModelRoute(deployment=DEP, version="base/1", sha256="0" * 64, context_len=4096, base="base")
CONTEXT = "第七倉庫の記録です。" * 40  # a long shared document


def _ctx(text: str, model: str = "base"):
    route = ROUTE if model == "base" else ModelRoute(**{**ROUTE.__dict__, "base": "base"})
    payload = {
        "model": model,
        "messages": [{"role": "system", "content": CONTEXT}, {"role": "user", "content": text}],
    }
    return SimpleNamespace(path="/v1/chat/completions", model=model, route=route, payload=payload)


def _router(local_load=None, **options) -> tuple[Router, Upstreams]:
    upstreams = Upstreams()
    upstreams.update(
        {DEP: [{"url": A, "ts": time.time(), "names": {}}, {"url": B, "ts": time.time(), "names": {}}]}
    )
    local = SimpleNamespace(url=A, load=local_load) if local_load else None
    return Router(upstreams, RoutingOptions(**options), RouteMetrics(CollectorRegistry()), local), upstreams


def test_block_hashes_chain_so_a_shared_prefix_shares_leading_hashes():
    one = block_hashes("base", prompt_text(_ctx("q1").payload))
    two = block_hashes("base", prompt_text(_ctx("another question entirely").payload))
    shared = len(prompt_text(_ctx("").payload)) // 64
    assert one[:shared] == two[:shared] and len(one) >= shared
    assert block_hashes("adapter", prompt_text(_ctx("q1").payload))[0] != one[0]  # per model
    assert block_hashes("base", "x" * 63) == []  # only whole blocks


def test_the_index_is_lru_aged_and_merges_what_peers_published():
    index = PrefixIndex(keep=4)
    index.record(A, [1, 2, 3])
    index.record(A, [9, 8, 7])
    assert index.matched(A, [1, 2, 3]) == 1 and index.matched(A, [9, 8, 7]) == 3  # 2, 3 aged out
    other = PrefixIndex()
    other.merge("peer", index.export())
    assert other.matched(A, [9, 8, 7, 6]) == 3 and other.matched(B, [9]) == 0
    other.forget({B}, set())
    assert other.matched(A, [9, 8, 7]) == 0
    adapters = AdapterIndex()
    for name in ("a", "b", "c"):
        adapters.record(B, name, slots=2)
    assert adapters.held(B) == {"b", "c"}


def test_a_repeated_prefix_goes_where_it_went_before_and_new_ones_spread_by_load():
    router, upstreams = _router()
    first = _ctx("q1")
    choice = router.choose(first, router.hashes(first))
    assert choice.entry["url"] == A and choice.reason == "load"  # equals: the table's order
    router.routed(first, choice, router.hashes(first))
    upstreams.inflight[A] = 2  # busy, but within max_imbalance
    again = _ctx("a different question after the same document")
    choice = router.choose(again, router.hashes(again))
    assert (choice.entry["url"], choice.reason) == (A, "prefix") and choice.matched > 5
    upstreams.inflight[A] = 5  # past the bound: load wins over affinity
    assert router.choose(again, router.hashes(again)).entry["url"] == B


def test_a_new_document_goes_where_the_cache_has_room_before_the_least_loaded_replica():
    router, upstreams = _router()
    documents = [f"資料{i}: " + "第{i}倉庫の在庫と手続きの記録です。" * 40 for i in range(4)]

    def ask(doc: str, question: str):
        ctx = SimpleNamespace(
            path="/v1/chat/completions",
            model="base",
            route=ROUTE,
            payload={"model": "base", "messages": [{"role": "user", "content": f"{doc}\n{question}"}]},
        )
        hashes = router.hashes(ctx)
        choice = router.choose(ctx, hashes)
        router.routed(ctx, choice, hashes)
        return choice

    assert ask(documents[0], "q").entry["url"] == A
    upstreams.inflight[B] = 2  # B is busier, within the bound: the new document still goes to its room
    second = ask(documents[1], "q")
    assert (second.entry["url"], second.reason) == (B, "room")
    upstreams.inflight[B] = 0
    placed = {doc: ask(doc, "q").entry["url"] for doc in documents[2:]}
    assert sorted(placed.values()) == [A, B]  # four documents, two per replica's cache
    # Their followers go back to them (prefix); a short cold prompt is placed by load.
    assert [ask(doc, "次の質問").reason for doc in documents] == ["prefix"] * 4
    upstreams.inflight[A] = 1
    assert ask("短い質問", "").entry["url"] == B
    # Another gateway, knowing only what this one published, places a new document alike.
    other, _ = _router()
    other.merge({DEP: [{"url": A, "state": router.state()}, {"url": B, "state": {}}]})
    router.prefixes.record(A, list(range(10_000, 10_050)))  # A now looks fuller
    other.merge({DEP: [{"url": A, "state": router.state()}, {"url": B, "state": {}}]})
    fresh = SimpleNamespace(
        path="/v1/chat/completions",
        model="base",
        route=ROUTE,
        payload={"model": "base", "messages": [{"role": "user", "content": "新資料: " + "記録" * 300}]},
    )
    assert other.choose(fresh, other.hashes(fresh)).entry["url"] == B
    upstreams.inflight[B] = 9  # past the bound: load wins over room
    assert router.choose(fresh, router.hashes(fresh)).entry["url"] == A


def test_an_adapter_goes_to_a_replica_holding_it_unless_it_is_busier():
    router, upstreams = _router()
    ctx = SimpleNamespace(
        path="/v1/completions",
        model="ja",
        route=ModelRoute(**{**ROUTE.__dict__}),
        payload={"model": "ja", "prompt": "short"},
    )
    router.adapters.record(B, "ja", slots=4)
    choice = router.choose(ctx, router.hashes(ctx))
    assert (choice.entry["url"], choice.reason) == (B, "adapter")
    upstreams.inflight[B] = 1  # one request more than A: still worth it
    assert router.choose(ctx, router.hashes(ctx)).entry["url"] == B
    upstreams.inflight[B] = 2  # two more: A loads the adapter instead of queueing behind B
    assert router.choose(ctx, router.hashes(ctx)).entry["url"] == A


def test_the_local_engine_wins_ties_and_connection_mode_keeps_it():
    load = {"n": 0}
    router, upstreams = _router(local_load=lambda: load["n"])
    upstreams.table[DEP].reverse()  # the local engine is not first in the table
    ctx = _ctx("q")
    assert router.choose(ctx, []).entry["url"] == A
    load["n"] = 3
    assert router.choose(ctx, []).entry["url"] == B
    router.options = RoutingOptions(by="connection")
    assert router.choose(ctx, []).reason == "local"


def test_published_state_round_trips_between_two_gateways():
    one, _ = _router(local_load=lambda: 1)
    ctx = _ctx("q1")
    choice = one.choose(ctx, one.hashes(ctx))
    one.routed(ctx, choice, one.hashes(ctx))
    two, upstreams = _router()
    upstreams.table[DEP][0]["state"] = one.state()
    two.merge(upstreams.table)
    again = _ctx("q2")
    hashes = two.hashes(again)
    went = choice.entry["url"]
    upstreams.inflight[went] = 3  # the other idle, this one within the bound
    assert two.choose(again, hashes).entry["url"] == went


def test_many_adapters_take_lora_slots_and_a_catalog_needs_a_registry_base():
    import pytest

    from serve import ServeAppConfig

    adapters = [{"name": f"lora-{i}", "source": "/adapters/x"} for i in range(64)]
    model = {"name": "base", "source": "registry:base@production", "adapters": adapters}
    cfg = ServeAppConfig.model_validate(
        {"name": "app", "models": [{**model, "engine": {"max_loras": 4, "max_cpu_loras": 16}}]}
    )
    assert cfg.models[0].engine.max_cpu_loras == 16 and cfg.gateway.routing.by == "affinity"
    with pytest.raises(
        ValueError, match=r"(?s)models\.0.*max_cpu_loras \(2\) must be at least engine.max_loras \(4\)"
    ):
        ServeAppConfig.model_validate(
            {"name": "app", "models": [{**model, "engine": {"max_loras": 4, "max_cpu_loras": 2}}]}
        )
    with pytest.raises(ValueError, match=r"(?s)models\.0.*adapter_alias needs a registry source"):
        ServeAppConfig.model_validate(
            {
                "name": "app",
                "models": [{"name": "base", "source": "/models/base", "adapter_alias": "production"}],
            }
        )
    with pytest.raises(ValueError, match=r"(?s)gateway\.routing\.by"):
        ServeAppConfig.model_validate(
            {"name": "app", "models": [model], "gateway": {"routing": {"by": "random"}}}
        )


def test_vllms_cache_size_is_read_from_its_metrics():
    from serve.autoscaling import parse_cache_tokens

    metrics = (
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0",'
        'num_cpu_blocks="None",num_gpu_blocks="2048",prefix_caching_hash_algo="sha256"} 1.0\n'
    )
    assert parse_cache_tokens(metrics) == 32768
    assert parse_cache_tokens("vllm:num_requests_running 0.0\n") is None


def test_the_index_claims_no_more_prefixes_than_the_replicas_cache_holds():
    """A replica whose cache holds 32 blocks of prompt text: after more documents than
    fit were routed there, the first is no longer taken as cached (vLLM has evicted it),
    so a question after it goes by load, not back to that replica."""
    router, upstreams = _router()
    tokens = 1366  # 32 blocks of 64 characters, at the default 1.5 characters a token
    upstreams.update(
        {
            DEP: [
                {"url": A, "ts": time.time(), "names": {}, "cache_tokens": tokens},
                {"url": B, "ts": time.time(), "names": {}, "cache_tokens": tokens},
            ]
        }
    )
    entry = upstreams.live(DEP, frozenset())[0]
    assert router.keep_blocks(entry, DEP) == 32

    def ask(doc: str, question: str):
        ctx = _ctx(question)
        ctx.payload["messages"][0]["content"] = doc
        hashes = router.hashes(ctx)
        return ctx, hashes, router.choose(ctx, hashes)

    docs = [f"文書{i}:" + "倉庫の記録です。" * 100 for i in range(4)]  # 13 blocks each with the question
    for doc in docs:
        ctx, hashes, _ = ask(doc, "q")
        router.routed(ctx, SimpleNamespace(entry=entry, matched=0, reason="load"), hashes)
    assert len(router.prefixes.own[A]) == 32
    _, _, last = ask(docs[-1], "another question")
    assert (last.entry["url"], last.reason) == (A, "prefix")  # still held
    # As in vLLM's cache, a prompt's last blocks go first: the second document keeps
    # its leading blocks, the first none.
    _, _, second = ask(docs[1], "another question")
    assert 0 < second.matched < 12
    _, _, first = ask(docs[0], "another question")
    assert first.matched == 0 and first.reason != "prefix"  # evicted: not claimed


def test_a_models_characters_per_token_are_learned_from_its_answers():
    router, upstreams = _router()
    entry = {"url": A, "cache_tokens": 6400}
    assert router.keep_blocks(entry, DEP) == 150  # 6400 tokens x 1.5 characters / 64
    assert router.keep_blocks({"url": A}, DEP) is None  # no size published: KEEP_BLOCKS
    ctx = _ctx("an English question, about four characters a token")
    router.hashes(ctx)
    ctx.record = {"prompt_tokens": ctx.prompt_chars // 4}
    router.answered(ctx)
    assert router.chars_per_token[DEP] == pytest.approx(4.0, rel=0.01)
    assert router.keep_blocks(entry, DEP) == pytest.approx(400, abs=2)
    for _ in range(50):  # then Japanese answers move it, a step at a time
        ctx.record = {"prompt_tokens": ctx.prompt_chars}
        router.answered(ctx)
    assert router.chars_per_token[DEP] == pytest.approx(1.0, rel=0.05)
