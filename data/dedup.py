"""Exact and near-duplicate removal; the first occurrence of a row is kept.

Exact: a 64-bit digest of the example's canonical content (roles included).

Near: MinHash over character n-grams (characters, not words: Japanese has no
spaces) with locality-sensitive hashing in bands; a row is a near duplicate when
any band of its signature equals the same band of an earlier row. With the
defaults (64 permutations, threshold 0.8: 9 bands of 7) rows with a Jaccard
similarity of 0.9 collide in 99.7% of cases, at 0.8 in 88%, at 0.6 in 23%, at
0.5 in 7% (no second check against stored signatures: that would cost 256 bytes
a row).

Why not datasketch: it hashes shingles one Python call at a time and applies
every permutation to every shingle, which would make dedup the slowest step of
the pipeline; here the shingle hashes are numpy array operations and each is
binned once (numpy is maintained and already a dependency). The index keeps
only 64-bit band keys, no signatures or texts.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import tempfile

import numpy as np
import orjson

EMPTY = np.iinfo(np.uint64).max


def content_key(messages: list[dict] | None, text: str | None) -> bytes:
    """16-byte digest of an example's content: the identity used by dedup and split.

    The digest is of the content as compact JSON (`json.dumps(...,
    ensure_ascii=False, separators=(",", ":"))`, UTF-8); orjson writes the same
    bytes for str-only content, several times faster.

    Raises:
        UnicodeEncodeError: a text holds a lone surrogate (not a character).
    """
    value = messages if messages is not None else text
    try:
        canonical = orjson.dumps(value)
    except TypeError:  # a lone surrogate (or a value orjson does not write): the standard encoder decides
        canonical = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.blake2b(canonical, digest_size=16).digest()


def collision_probability(similarity: float, bands: int, rows: int) -> float:
    """Chance that two rows with this Jaccard similarity share at least one band."""
    return 1 - (1 - similarity**rows) ** bands


def band_shape(num_perm: int, threshold: float, recall: float = 0.85) -> tuple[int, int]:
    """(bands, rows per band): the longest bands (fewest false positives) that
    still catch rows at `threshold` similarity with probability >= `recall`."""
    fits = [
        (num_perm // r, r)
        for r in range(1, num_perm + 1)
        if collision_probability(threshold, num_perm // r, r) >= recall
    ]
    return fits[-1] if fits else (num_perm, 1)


class MinHasher:
    """MinHash signatures over character n-grams by one-permutation hashing:
    each n-gram is hashed once, its hash picks one of `num_perm` bins and the
    bin keeps its smallest value; empty bins borrow from the next non-empty bin
    (rotation densification, Shrivastava & Li 2014). One pass over the n-grams
    instead of one per permutation, with the same Jaccard estimate.

    `signatures` does a whole batch of texts in a few numpy operations over
    their concatenation; it gives exactly what `signature` gives text by text.
    """

    def __init__(self, num_perm: int = 64, shingle: int = 5, seed: int = 1):
        self.num_perm, self.shingle = num_perm, shingle
        self.seed = np.uint64(np.random.default_rng(seed).integers(1, 2**63))

    def _window_hashes(self, cps: np.ndarray, k: int) -> np.ndarray:
        """Hashes of every k-code-point window of `cps` (uint64 code points)."""
        n = max(len(cps) - k + 1, 1)
        h = np.full(n, self.seed, dtype=np.uint64)
        for j in range(k):
            if len(cps):
                h = h * np.uint64(1_000_003) + cps[j : j + n]
        h ^= h >> np.uint64(31)  # splitmix64 finaliser: spread the bits before binning
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))

    def shingle_hashes(self, text: str) -> np.ndarray:
        """64-bit hashes of every `shingle`-character window (the whole text if shorter)."""
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        return self._window_hashes(cps, min(self.shingle, len(cps)) or 1)

    def signature(self, text: str) -> np.ndarray:
        """The signature (num_perm uint64 values) of `text`."""
        h = self.shingle_hashes(text)
        p = self.num_perm
        sig = np.full(p, EMPTY, dtype=np.uint64)
        np.minimum.at(sig, (h % np.uint64(p)).astype(np.intp), h // np.uint64(p))
        return self._densify(sig)

    CHUNK_CHARS = 1 << 15  # texts hashed together: their temporaries (~60 bytes a character) stay ~2 MiB

    def signatures(self, texts: list[str]) -> np.ndarray:
        """Signatures of many texts at once: an array of shape (len(texts), num_perm).

        The texts are hashed a few at a time (about `CHUNK_CHARS` characters
        together): a batch's temporaries at once would be ~13 MiB (1,024 chat
        rows), a spike in every worker on every batch.
        """
        out = np.empty((len(texts), self.num_perm), dtype=np.uint64)
        start = chars = 0
        for i, text in enumerate(texts):
            chars += len(text)
            if chars >= self.CHUNK_CHARS or i == len(texts) - 1:
                out[start : i + 1] = self._signatures(texts[start : i + 1])
                start, chars = i + 1, 0
        return out

    def _signatures(self, texts: list[str]) -> np.ndarray:
        p, k = self.num_perm, self.shingle
        out = np.empty((len(texts), p), dtype=np.uint64)
        rows = [i for i, t in enumerate(texts) if len(t) >= k]
        for i in set(range(len(texts))) - set(rows):  # shorter than one shingle: the whole text is one
            out[i] = self.signature(texts[i])
        if not rows:
            return out
        lengths = np.array([len(texts[i]) for i in rows], dtype=np.int64)
        cps = np.frombuffer("".join(texts[i] for i in rows).encode("utf-32-le"), dtype=np.uint32).astype(
            np.uint64
        )
        h = self._window_hashes(cps, k)  # windows across two texts are hashed too, then left out
        windows = lengths - k + 1
        first = np.repeat(np.cumsum(lengths) - lengths - (np.cumsum(windows) - windows), windows)
        h = h[np.arange(windows.sum()) + first]
        row = np.repeat(np.arange(len(rows), dtype=np.int64), windows)
        sig = np.full(len(rows) * p, EMPTY, dtype=np.uint64)
        np.minimum.at(sig, row * p + (h % np.uint64(p)).astype(np.int64), h // np.uint64(p))
        sig = self._densify(sig.reshape(len(rows), p))
        out[rows] = sig
        return out

    def _densify(self, sig: np.ndarray) -> np.ndarray:
        """Fill each empty bin from the next non-empty one (cyclically), offset by the distance;
        `sig` is one signature or a matrix of them, each with at least one non-empty bin."""
        p = self.num_perm
        empty = sig == EMPTY
        if not empty.any():
            return sig
        idx = np.arange(2 * p)
        # the nearest non-empty bin at or after each position, looking twice around the ring
        nxt = np.where(np.concatenate([~empty, ~empty], axis=-1), idx, 2 * p)
        nxt = np.flip(np.minimum.accumulate(np.flip(nxt, axis=-1), axis=-1), axis=-1)[..., :p]
        src = nxt % p
        offset = (nxt - idx[:p]).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        return np.where(empty, np.take_along_axis(sig, src, axis=-1) + offset, sig)


def _mapping(size: int, spill_dir: str | None = None) -> mmap.mmap:
    """A zeroed memory mapping of `size` bytes that can grow in place
    (`resize`: mremap, no copy) and is unmapped when dropped: the index's
    arrays grow on every merge, and malloc'd ones of growing sizes would leave
    the heap fragmented. With `spill_dir` the mapping is an unnamed file there:
    its pages live in the page cache, which the kernel writes to disk and drops
    under memory pressure."""
    size = max(size, 1)
    if spill_dir is None:
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with tempfile.TemporaryFile(dir=spill_dir) as f:  # unlinked at once: nothing to clean up
        f.truncate(size)
        return mmap.mmap(f.fileno(), size)


class KeyIndex:
    """A set of 64-bit keys in 5 bytes a key, with no growth spikes.

    A key is kept as a 52-bit fingerprint: its top 12 bits pick one of 4,096
    ranges, and each range holds the next 40 bits as two sorted parallel
    arrays (32 + 8 bits). The ranges lie one after the other in two mappings
    (all high parts, all low parts) with their offsets beside them (32 KiB).
    A batch of keys is looked up all at once: one binary search over the first
    key of every block of 32 (a table of 0.25 bytes a key, small enough to stay
    in the CPU's cache), then a vectorised binary search within each key's
    block. Two different keys share a fingerprint with probability n / 2^52 per
    lookup: with 100 M keys stored (10 M rows), about one row in 4.5 million is
    taken for a duplicate by accident, far below MinHash's own false positives.

    New keys wait in a small sorted array (8 bytes a key, exact; at most 1/64
    of the index, at least 64 Ki keys) and are merged in when it fills: the
    mappings grow in place, then the ranges are rewritten in 64 groups from
    the last to the first, each into its new place (which only lies over its
    own old place or over groups already moved), so the index never needs
    twice its size: one group's copy at most. A group is merged with a stable
    sort (timsort), which finds its two runs (stored, new) already sorted. With
    `spill_dir` the mappings are unnamed files there, and the pages a lookup
    touched are released after it: the index lives in the page cache (written
    to disk and dropped under memory pressure), not in the process's memory.
    (An open-addressing table of 64-bit keys costs 12-18 bytes a key and twice
    that while it grows; a Python set 60-90.)
    """

    RANGE_BITS = 12
    GROUP_BITS = 6  # a merge rewrites the ranges in 2^GROUP_BITS groups
    LOW_BITS = 8  # stored below the 32-bit high part
    MIN_PENDING = 1 << 16
    BLOCK = 32  # keys per block of the lookup's first step (its table: 8 bytes a block)

    def __init__(self, spill_dir: str | None = None):
        self.spill_dir = spill_dir
        self._block_starts = np.empty(0, dtype=np.uint64)  # (range, high part) of each block's first key
        self._offsets = np.zeros((1 << self.RANGE_BITS) + 1, dtype=np.int64)  # range r: [off[r], off[r + 1])
        self._maps: list[mmap.mmap] = []  # (high parts, low parts), once anything is stored
        self._hi = np.empty(0, dtype=np.uint32)
        self._lo = np.empty(0, dtype=np.uint8)
        self._pending = np.empty(0, dtype=np.uint64)  # sorted, distinct, not merged yet

    @property
    def _stored(self) -> int:
        """Keys in the sorted ranges (the last range's end)."""
        return int(self._offsets[-1])

    def __len__(self) -> int:
        return self._stored + len(self._pending)

    @property
    def nbytes(self) -> int:
        """Bytes held: the sorted ranges, their lookup table and the pending keys."""
        return self._hi.nbytes + self._lo.nbytes + self._block_starts.nbytes + self._pending.nbytes

    def _split(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(range, high 32 bits, low bits) of each key's fingerprint."""
        below = 64 - self.RANGE_BITS
        part = (keys >> np.uint64(below)).astype(np.intp)
        hi = (keys >> np.uint64(below - 32)).astype(np.uint32)  # the cast keeps the low 32 bits
        return part, hi, (keys >> np.uint64(below - 32 - self.LOW_BITS)).astype(np.uint8)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """For each key (a uint64 array), whether the index holds it."""
        keys = np.asarray(keys, dtype=np.uint64).ravel()
        found = np.zeros(len(keys), dtype=bool)
        if self._stored and len(keys):
            part, hi, lo = self._split(keys)
            his, los, step = self._hi, self._lo, self.BLOCK
            last = len(his) - 1
            # Which block each key's high part falls in (one C-level binary search
            # over the block starts, a small array), then the lower bound within
            # that block and the key's range, all keys at once.
            wanted = (part.astype(np.uint64) << np.uint64(32)) | hi
            block = np.searchsorted(self._block_starts, wanted)
            base = np.maximum((block - 1) * step, self._offsets[part])
            end = self._offsets[part + 1]
            length = np.maximum(np.minimum(block * step, end) - base, 0)
            while length.any():
                half = length >> 1
                mid = base + half
                less = (his[np.minimum(mid, last)] < hi) & (length > 0)
                base = np.where(less, mid + 1, base)
                length = np.where(less, length - half - 1, half)
            # Walk the (short, usually one-long) run of equal high parts for the low part.
            active = base < end
            while active.any():
                at = np.minimum(base, last)
                same = active & (his[at] == hi)
                hit = same & (los[at] == lo)
                found |= hit
                base = base + 1
                active = same & ~hit & (base < end)
            if self.spill_dir is not None:
                self._release_pages()
        pending = self._pending
        if len(pending) and len(keys):
            found |= pending[np.minimum(np.searchsorted(pending, keys), len(pending) - 1)] == keys
        return found

    def add(self, keys) -> None:
        """Add keys (ints or a uint64 array); adding a key already present is harmless (it is kept twice)."""
        if not isinstance(keys, np.ndarray):
            keys = np.fromiter(keys, dtype=np.uint64)
        merged = np.concatenate([self._pending, np.unique(keys.astype(np.uint64, copy=False).ravel())])
        merged.sort(kind="stable")  # two sorted runs: one linear merge
        if len(merged) > 1 and not (distinct := merged[1:] != merged[:-1]).all():
            merged = merged[np.concatenate([[True], distinct])]
        self._pending = merged
        if len(self._pending) >= max(self.MIN_PENDING, self._stored >> self.GROUP_BITS):
            self._merge()

    def _grow(self, n: int) -> None:
        """Make the two mappings hold `n` keys (in place: their contents stay)."""
        self._hi = self._lo = None  # a mapping with live views cannot be resized
        if not self._maps:
            self._maps = [_mapping(4 * n, self.spill_dir), _mapping(n, self.spill_dir)]
        else:
            self._maps[0].resize(max(4 * n, 1))
            self._maps[1].resize(max(n, 1))
        self._hi = np.frombuffer(self._maps[0], dtype=np.uint32, count=n)
        self._lo = np.frombuffer(self._maps[1], dtype=np.uint8, count=n)

    def _release_pages(self) -> None:
        for mm in self._maps:
            mm.madvise(mmap.MADV_DONTNEED)  # shared file pages: dropped from this process, kept in the cache

    def _merge(self) -> None:
        new, self._pending = self._pending, np.empty(0, dtype=np.uint64)
        low, hi_low = np.uint64(self.LOW_BITS), np.uint64(32 + self.LOW_BITS)
        part, hi, lo = self._split(new)
        del new
        # the fingerprint as one sortable number: (range, high part, low part)
        fingerprint = (part.astype(np.uint64) << hi_low) | (hi.astype(np.uint64) << low) | lo
        del part, hi, lo
        fingerprint.sort()
        old = self._offsets
        edges = np.searchsorted(
            fingerprint >> hi_low, np.arange(len(old), dtype=np.uint64)
        )  # range r: [edges[r], edges[r + 1])
        moved = old + edges  # where each range starts once merged
        self._grow(int(moved[-1]))
        his, los = self._hi, self._lo
        per_group = 1 << (self.RANGE_BITS - self.GROUP_BITS)
        # Last group first: group g's new place starts at or after its old one and
        # ends before the next group's new place, so it covers only its own old
        # keys (copied out just before) and groups already moved.
        for r0 in range(len(old) - 1 - per_group, -1, -per_group):
            r1 = r0 + per_group
            a, b = int(old[r0]), int(old[r1])
            added = fingerprint[edges[r0] : edges[r1]]
            if not len(added) and a == moved[r0]:
                continue  # neither new keys nor a new place
            merged = np.empty(b - a + len(added), dtype=np.uint64)
            stored = merged[: b - a]
            stored[:] = his[a:b]
            stored <<= low
            stored |= los[a:b]
            stored |= np.repeat(np.arange(r0, r1, dtype=np.uint64) << hi_low, np.diff(old[r0 : r1 + 1]))
            merged[b - a :] = added
            merged.sort(kind="stable")  # timsort: two sorted runs
            s, e = int(moved[r0]), int(moved[r1])
            los[s:e] = merged  # the low bits (assignment truncates)
            np.right_shift(merged, low, out=merged)
            his[s:e] = merged  # the high part (the range's bits are cut off the same way)
            del merged, stored, added
        self._offsets = moved
        firsts = np.arange(0, self._stored, self.BLOCK)
        ranges = np.searchsorted(moved, firsts, side="right") - 1
        self._block_starts = (ranges.astype(np.uint64) << np.uint64(32)) | his[firsts]
        if self.spill_dir is not None:
            self._release_pages()


class Deduplicator:
    """Decides, in read order, whether a row repeats an earlier one.

    Keys are computed where the rows are processed (`band_keys_batch`, pure);
    decisions are made in one place, a batch at a time (`check_batch`), so the
    result does not depend on how many processes computed the keys.

    Args:
        exact: drop rows whose content equals an earlier row's.
        near: drop rows whose MinHash bands collide with an earlier row's.
        threshold: Jaccard similarity at which near-duplicates are caught.
        num_perm: MinHash permutations.
        shingle: characters per n-gram.
        spill_dir: keep the index in unnamed files there (page cache) instead of in memory.
    """

    def __init__(
        self,
        exact: bool = True,
        near: bool = True,
        threshold: float = 0.8,
        num_perm: int = 64,
        shingle: int = 5,
        spill_dir: str | None = None,
    ):
        self.exact, self.near = exact, near
        self.hasher = MinHasher(num_perm, shingle)
        self.bands, self.rows = band_shape(num_perm, threshold)
        mult = np.random.default_rng(7).integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self._band_mult = mult
        self._band_salt = np.arange(self.bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        self._seen = KeyIndex(spill_dir)  # exact keys and band keys (salted per band) share one index

    def band_keys_batch(self, texts: list[str]) -> np.ndarray:
        """The LSH band keys of each text: shape (len(texts), bands), or (len(texts), 0) without near dedup."""
        if not self.near:
            return np.empty((len(texts), 0), dtype=np.uint64)
        sig = self.hasher.signatures(texts)[:, : self.bands * self.rows].reshape(
            len(texts), self.bands, self.rows
        )
        return (sig * self._band_mult).sum(axis=2, dtype=np.uint64) ^ self._band_salt

    def band_keys(self, text: str) -> list[int]:
        """The LSH band keys of one text."""
        return self.band_keys_batch([text])[0].tolist()

    def check_batch(
        self, exact_keys: np.ndarray, band_keys: np.ndarray, rows: list[int] | None = None
    ) -> list[str | None]:
        """Record rows in order by their exact key (uint64, one per row) and band
        keys (one row of `band_keys` each); for each row the drop reason
        ("exact_duplicate", "near_duplicate") or None to keep it. A row's exact
        key is recorded unless it is an exact duplicate, its band keys only when
        it is kept. `rows`: the indices to check (default all); others get None.
        """
        n = len(exact_keys)
        rows = range(n) if rows is None else rows
        cols = ([np.asarray(exact_keys, dtype=np.uint64).reshape(n, 1)] if self.exact else []) + (
            [np.asarray(band_keys, dtype=np.uint64).reshape(n, -1)] if self.near else []
        )
        if not cols:
            return [None] * n
        keys = np.concatenate(cols, axis=1)
        found = self._seen.contains(keys).reshape(keys.shape).tolist()
        keys = keys.tolist()
        verdicts: list[str | None] = [None] * n
        added: set[int] = set()  # keys of this batch's earlier rows
        for i in rows:
            ks, hit = keys[i], found[i]
            if self.exact:
                if hit[0] or ks[0] in added:
                    verdicts[i] = "exact_duplicate"
                    continue
                added.add(ks[0])
                ks, hit = ks[1:], hit[1:]
            if ks:
                if any(hit) or not added.isdisjoint(ks):
                    verdicts[i] = "near_duplicate"
                    continue
                added.update(ks)
        self._seen.add(added)
        return verdicts

    def check_keys(self, key: bytes, band_keys: list[int]) -> str | None:
        """`check_batch` for one row given its content key (bytes) and band keys."""
        return self.check_batch(
            np.array([exact_key(key)], dtype=np.uint64), np.array([band_keys], dtype=np.uint64).reshape(1, -1)
        )[0]

    @property
    def index_bytes(self) -> int:
        """Memory held by the index (the one structure that grows with the input)."""
        return self._seen.nbytes

    def check(self, key: bytes, text: str) -> str | None:
        """`check_keys` for a text whose band keys are not computed yet."""
        return self.check_keys(key, self.band_keys(text))


def exact_key(key: bytes) -> int:
    """The 64-bit exact-duplicate key of a content key."""
    return int.from_bytes(key[:8], "little")
