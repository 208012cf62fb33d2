"""Which replica answers a request: per request, not per connection.

With the gateway inside every engine replica and the replicas sharing the app's
port, the kernel picks a process per *connection*; a client with a few
keep-alive connections would pin its traffic to the processes they reached.
Each gateway therefore picks, for every request, among the live replicas of
the model's deployment on every node (serve.gateway.routing's table):

1. the one holding the longest cached prefix of the prompt (serve.gateway.prefix_index);
2. then one that has the adapter loaded, if it has at most ADAPTER_SLACK more
   requests in flight than the least loaded replica (loading an adapter into a
   LoRA slot costs less than queueing behind more requests);
3. for a long prompt no replica holds any of (a new shared document or system
   prompt), the one whose cache looks emptiest (fewest prompt blocks routed to
   it), as SGLang's cache-aware router places a cold prompt on its smallest
   tree: new documents spread over the replicas' caches instead of piling into
   one, which then evicts what its own clients come back for;
4. then the one with the least work in flight; then this process's own engine
   (no hop at all);

but only among replicas within `max_imbalance` requests of the least loaded
one, so affinity never piles work on one replica while another idles. Load is
what each replica's gateway last published (requests in flight at its engine,
counted by the embedded gateway's middleware, about a second old) or what this
gateway itself has in flight there, whichever is more; this process's own
engine is counted exactly.

`by: connection` keeps the kernel's spreading: a request is answered by the
engine in the process its connection reached, when that engine serves it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from serve.gateway.context import RequestContext
from serve.gateway.prefix_index import AdapterIndex, PrefixIndex, block_hashes, prompt_text
from serve.gateway.route_metrics import RouteMetrics
from serve.gateway.routing import Upstreams

DEFAULT_LORA_SLOTS = 4
ADAPTER_SLACK = 1  # requests in flight beyond the least loaded replica's that adapter affinity may add
COLD_BLOCKS = 8  # a prompt of 8 blocks (512 characters) or more is worth a cache's room
# Prompt characters per token until a model's answers say otherwise (Japanese text
# runs 1-2 characters a token, English about 4): low, so the index rather forgets a
# prefix the cache still holds than claims one it evicted.
CHARS_PER_TOKEN = 1.5
LEARN_RATE = 0.1  # weight of each answer's characters per prompt token in the running estimate


@dataclass(frozen=True)
class RoutingOptions:
    """The app config's `gateway.routing` (serve.config.RoutingSettings)."""

    by: str = "affinity"  # or "connection"
    max_imbalance: int = 4
    block_chars: int = 64


@dataclass(frozen=True)
class Choice:
    entry: dict  # the replica's route table entry
    reason: str  # prefix | adapter | load | local
    matched: int  # prompt blocks the replica holds


class Router:
    """Args:
    upstreams: the live replicas (shared with the forwarder and the route refresh).
    metrics: where routing decisions and per-replica state are shown.
    local: the engine in this process (serve.gateway.embedded.LocalEngine), if any.
    """

    def __init__(self, upstreams: Upstreams, options: RoutingOptions, metrics: RouteMetrics, local=None):
        self.upstreams, self.options, self.metrics, self.local = upstreams, options, metrics, local
        self.local_url = local.url if local is not None else None
        self.prefixes, self.adapters = PrefixIndex(), AdapterIndex()
        self.hits: Counter[str] = Counter()  # url -> requests sent there with a cached prefix
        self.chars_per_token: dict[str, float] = {}  # deployment -> prompt characters per token
        self.forwards: Counter[str] = Counter()  # url -> requests forwarded there

    # ---- per request ----------------------------------------------------------
    def hashes(self, ctx: RequestContext) -> list[int]:
        if self.options.by != "affinity" or ctx.path == "/v1/embeddings":
            return []
        text = prompt_text(ctx.payload)
        ctx.prompt_chars = len(text)
        return block_hashes(ctx.model or "", text, self.options.block_chars)

    def answered(self, ctx: RequestContext) -> None:
        """Learn the model's prompt characters per token from an answer's usage."""
        tokens = ctx.record.get("prompt_tokens") if ctx.record else None
        if not tokens or tokens < 16 or not ctx.prompt_chars or ctx.route is None:
            return
        seen = ctx.prompt_chars / tokens
        known = self.chars_per_token.get(ctx.route.deployment)
        self.chars_per_token[ctx.route.deployment] = (
            seen if known is None else known + LEARN_RATE * (seen - known)
        )

    def keep_blocks(self, entry: dict, deployment: str) -> int | None:
        """How many prompt blocks the replica's KV cache holds (its published size in
        tokens, at the model's characters per token), or None if it published none."""
        tokens = entry.get("cache_tokens")
        if not tokens:
            return None
        chars = tokens * self.chars_per_token.get(deployment, CHARS_PER_TOKEN)
        return max(COLD_BLOCKS, int(chars // self.options.block_chars))

    def load(self, entry: dict) -> float:
        url = entry["url"]
        mine = self.upstreams.inflight.get(url, 0)
        if url == self.local_url and self.local is not None:
            return max(self.local.load(), mine)
        return max(float((entry.get("state") or {}).get("load", 0)), mine)

    def choose(
        self, ctx: RequestContext, hashes: list[int], exclude: frozenset[str] = frozenset()
    ) -> Choice | None:
        """The replica for `ctx` (its route and model set), never one in `exclude`."""
        live = self.upstreams.live(ctx.route.deployment, exclude)
        if not live:
            return None
        if self.options.by == "connection":
            own = next((e for e in live if e["url"] == self.local_url), None)
            if own is not None:
                return Choice(own, "local", 0)
            return Choice(min(live, key=self.load), "load", 0)
        loads = {e["url"]: self.load(e) for e in live}
        least = min(loads.values())
        bound = least + self.options.max_imbalance
        adapter = ctx.model if ctx.route.base != ctx.model else None
        prefix = {e["url"]: self.prefixes.matched(e["url"], hashes) if hashes else 0 for e in live}
        cold = len(hashes) >= COLD_BLOCKS and not any(prefix.values())

        def score(e: dict) -> tuple:
            url = e["url"]
            return (
                prefix[url],
                adapter is not None
                and loads[url] <= least + ADAPTER_SLACK
                and self.adapters.holds(url, adapter),
                -self.prefixes.occupancy(url) if cold else 0,
                -loads[url],
                url == self.local_url,
            )

        best, best_score = None, None
        for e in live:  # the first of equals: the table's order
            if loads[e["url"]] > bound:
                continue
            s = score(e)
            if best_score is None or s > best_score:
                best, best_score = e, s
        matched, holds, room, _, _ = best_score
        alternatives = [score(e) for e in live if e is not best and loads[e["url"]] <= bound]
        if matched and any(a[0] < matched for a in alternatives):
            reason = "prefix"
        elif holds and any(not a[1] for a in alternatives):
            reason = "adapter"
        elif cold and any(a[2] < room for a in alternatives):
            reason = "room"
        elif best["url"] == self.local_url and all(a[3] == best_score[3] for a in alternatives):
            reason = "local"
        else:
            reason = "load"
        return Choice(best, reason, matched)

    def routed(self, ctx: RequestContext, choice: Choice, hashes: list[int]) -> None:
        """Remember that `choice` serves this prompt (and adapter) from now on."""
        url = choice.entry["url"]
        if hashes:
            self.prefixes.record(url, hashes, self.keep_blocks(choice.entry, ctx.route.deployment))
        if ctx.route.base != ctx.model and ctx.model:
            self.adapters.record(url, ctx.model, choice.entry.get("lora_slots", DEFAULT_LORA_SLOTS))
        forwarded = url != self.local_url and self.local is not None
        if choice.matched:
            self.hits[url] += 1
        if forwarded:
            self.forwards[url] += 1
        self.metrics.routed(url, choice.reason, bool(choice.matched), forwarded)

    # ---- shared state ---------------------------------------------------------
    def merge(self, table: dict[str, list[dict]]) -> None:
        """Take what the other replicas' gateways published in the route table."""
        urls, peers = set(), set()
        for entries in table.values():
            for e in entries:
                urls.add(e["url"])
                state = e.get("state")
                if not state or e["url"] == self.local_url:
                    continue
                peers.add(e["url"])
                self.prefixes.merge(e["url"], state.get("prefix") or {})
                self.adapters.merge(e["url"], state.get("adapters") or {})
        self.prefixes.forget(urls, peers)
        self.adapters.forget(urls, peers)
        self.metrics.replicas(
            {
                e["url"]: (self.load(e), len(self.adapters.held(e["url"])))
                for entries in table.values()
                for e in entries
            }
        )

    def state(self) -> dict:
        """What this gateway publishes beside its replica's route entry."""
        return {
            "load": self.local.load() if self.local is not None else 0,
            "prefix": self.prefixes.export(),
            "adapters": self.adapters.export(),
            "prefix_hits": dict(self.hits),
            "forwards": dict(self.forwards),
        }
