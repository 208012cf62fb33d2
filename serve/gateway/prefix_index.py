"""Which replica holds which prompt prefix and which adapter: an approximate
index built from the requests the gateways routed (as llm-d's approximate
prefix scheduler and SGLang's cache-aware router do), not read from the engines.

A prompt is cut into blocks of BLOCK_CHARS characters of its text (the chat
messages as the gateway received them: the same text renders to the same
tokens under the model's chat template); block k's hash chains blocks 0..k
and the model name (vLLM keeps one prefix cache per adapter), so a replica
that holds block k's hash holds the whole prefix up to it. Each gateway keeps,
per replica, the hashes it routed there (LRU, as many as that replica's KV cache
holds, serve.gateway.router.Router.keep_blocks, at most KEEP_BLOCKS) and publishes
the newest PUBLISH_BLOCKS of them beside its replica's route entry; every
gateway merges what the others published, so a prefix one gateway routed is
found by all within a couple of seconds.
"""

from __future__ import annotations

import base64
import hashlib
from array import array
from collections import OrderedDict

BLOCK_CHARS = 64
MAX_BLOCKS = 1024  # longer prompts: the first 64k characters decide
KEEP_BLOCKS = 8192  # per replica, what this gateway routed there
PUBLISH_BLOCKS = 2048  # per replica, the newest of them (16 KiB)


def prompt_text(payload: dict) -> str:
    """The text a request's prompt starts with: chat messages (role and content,
    text parts only) in order, or a completion's prompt."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{m.get('role')}\x1f{content if isinstance(content, str) else ''}\x1e")
        return "".join(parts)
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else ""


def block_hashes(model: str, text: str, block_chars: int = BLOCK_CHARS) -> list[int]:
    """The chained 64-bit hash of each whole block of `text` (a partial last block is left out)."""
    out, h = [], hashlib.blake2b(model.encode(), digest_size=8).digest()
    end = min(len(text) // block_chars, MAX_BLOCKS) * block_chars
    for i in range(0, end, block_chars):
        h = hashlib.blake2b(h + text[i : i + block_chars].encode(), digest_size=8).digest()
        out.append(int.from_bytes(h, "little"))
    return out


def pack_blocks(hashes) -> str:
    return base64.b64encode(array("Q", hashes).tobytes()).decode()


def unpack_blocks(packed: str) -> frozenset[int]:
    a = array("Q")
    a.frombytes(base64.b64decode(packed))
    return frozenset(a)


class PrefixIndex:
    """Per replica URL: the prompt blocks routed there, by this gateway (`own`)
    and by the others (`peers`, as they published them)."""

    def __init__(self, keep: int = KEEP_BLOCKS):
        self.keep = keep
        self.own: dict[str, OrderedDict[int, None]] = {}
        self.peers: dict[str, dict[str, frozenset[int]]] = {}  # peer -> url -> hashes
        self._seen: dict[str, dict[str, str]] = {}  # peer -> what it published last

    def record(self, url: str, hashes: list[int], keep: int | None = None) -> None:
        """`hashes` routed to `url`, whose cache holds about `keep` blocks (else KEEP_BLOCKS)."""
        blocks = self.own.setdefault(url, OrderedDict())
        for h in reversed(hashes):  # a prompt's last blocks age out first, as in vLLM's cache
            blocks[h] = None
            blocks.move_to_end(h)
        limit = min(self.keep, keep) if keep else self.keep
        while len(blocks) > limit:
            blocks.popitem(last=False)

    def matched(self, url: str, hashes: list[int]) -> int:
        """How many leading blocks of `hashes` the replica at `url` holds."""
        own = self.own.get(url, {})
        theirs = [p[url] for p in self.peers.values() if url in p]
        for k in range(len(hashes) - 1, -1, -1):
            h = hashes[k]
            if h in own or any(h in s for s in theirs):
                return k + 1
        return 0

    def occupancy(self, url: str) -> int:
        """How many prompt blocks the gateways routed to `url` and still remember
        (this gateway's and what each peer published): how full its cache looks."""
        return len(self.own.get(url, ())) + sum(len(p.get(url, ())) for p in self.peers.values())

    def export(self, limit: int = PUBLISH_BLOCKS) -> dict[str, str]:
        """url -> the newest `limit` block hashes this gateway routed there, packed."""
        out = {}
        for url, blocks in self.own.items():
            newest = list(reversed(blocks))[:limit] if len(blocks) > limit else list(blocks)
            out[url] = pack_blocks(newest)
        return out

    def merge(self, peer: str, exported: dict[str, str]) -> None:
        """Take what gateway `peer` published (decoded again only when it changed)."""
        if self._seen.get(peer) == exported:
            return
        self._seen[peer] = exported
        self.peers[peer] = {url: unpack_blocks(packed) for url, packed in exported.items()}

    def forget(self, live_urls: set[str], live_peers: set[str]) -> None:
        """Drop replicas and peers that have left."""
        for url in [u for u in self.own if u not in live_urls]:
            del self.own[url]
        for peer in [p for p in self.peers if p not in live_peers]:
            del self.peers[peer], self._seen[peer]


class AdapterIndex:
    """Per replica URL: the adapters (internal names) routed there recently, at
    most the replica's LoRA slots (vLLM keeps that many, least recently used out)."""

    def __init__(self):
        self.own: dict[str, OrderedDict[str, None]] = {}
        self.peers: dict[str, dict[str, frozenset[str]]] = {}

    def record(self, url: str, adapter: str, slots: int) -> None:
        names = self.own.setdefault(url, OrderedDict())
        names[adapter] = None
        names.move_to_end(adapter)
        while len(names) > max(1, slots):
            names.popitem(last=False)

    def holds(self, url: str, adapter: str) -> bool:
        return adapter in self.own.get(url, {}) or any(adapter in p.get(url, ()) for p in self.peers.values())

    def held(self, url: str) -> set[str]:
        out = set(self.own.get(url, ()))
        for p in self.peers.values():
            out |= p.get(url, frozenset())
        return out

    def export(self) -> dict[str, list[str]]:
        return {url: list(names) for url, names in self.own.items()}

    def merge(self, peer: str, exported: dict[str, list[str]]) -> None:
        self.peers[peer] = {url: frozenset(names) for url, names in exported.items()}

    def forget(self, live_urls: set[str], live_peers: set[str]) -> None:
        for url in [u for u in self.own if u not in live_urls]:
            del self.own[url]
        for peer in [p for p in self.peers if p not in live_peers]:
            del self.peers[peer]
