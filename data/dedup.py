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
from array import array

import numpy as np

def content_key(messages: list[dict] | None, text: str | None) -> bytes:
    """16-byte digest of an example's content: the identity used by dedup and split."""
    canonical = json.dumps(messages if messages is not None else text, ensure_ascii=False,
                           separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


def collision_probability(similarity: float, bands: int, rows: int) -> float:
    """Chance that two rows with this Jaccard similarity share at least one band."""
    return 1 - (1 - similarity ** rows) ** bands


def band_shape(num_perm: int, threshold: float, recall: float = 0.85) -> tuple[int, int]:
    """(bands, rows per band): the longest bands (fewest false positives) that
    still catch rows at `threshold` similarity with probability >= `recall`."""
    fits = [(num_perm // r, r) for r in range(1, num_perm + 1)
            if collision_probability(threshold, num_perm // r, r) >= recall]
    return fits[-1] if fits else (num_perm, 1)


class MinHasher:
    """MinHash signatures over character n-grams by one-permutation hashing:
    each n-gram is hashed once, its hash picks one of `num_perm` bins and the
    bin keeps its smallest value; empty bins borrow from the next non-empty bin
    (rotation densification, Shrivastava & Li 2014). One pass over the n-grams
    instead of one per permutation, with the same Jaccard estimate.
    """

    def __init__(self, num_perm: int = 64, shingle: int = 5, seed: int = 1):
        self.num_perm, self.shingle = num_perm, shingle
        self.seed = np.uint64(np.random.default_rng(seed).integers(1, 2**63))

    def shingle_hashes(self, text: str) -> np.ndarray:
        """64-bit hashes of every `shingle`-character window (the whole text if shorter)."""
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        k = min(self.shingle, len(cps)) or 1
        n = max(len(cps) - k + 1, 1)
        h = np.full(n, self.seed, dtype=np.uint64)
        for j in range(k):
            if len(cps):
                h = h * np.uint64(1_000_003) + cps[j:j + n]
        h ^= h >> np.uint64(31)  # splitmix64 finaliser: spread the bits before binning
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))

    def signature(self, text: str) -> np.ndarray:
        """The signature (num_perm uint64 values) of `text`."""
        h = self.shingle_hashes(text)
        p = self.num_perm
        sig = np.full(p, np.iinfo(np.uint64).max, dtype=np.uint64)
        np.minimum.at(sig, (h % np.uint64(p)).astype(np.intp), h // np.uint64(p))
        empty = sig == np.iinfo(np.uint64).max
        if empty.any():
            full = np.flatnonzero(~empty)
            idx = np.arange(p)
            src = full[np.searchsorted(full, idx) % len(full)]
            offset = ((src - idx) % p).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            sig = np.where(empty, sig[src] + offset, sig)
        return sig


class KeySet:
    """A set of 64-bit keys in one flat array (open addressing, linear probing).

    8 bytes a slot, at most 2/3 full, growing by 1.5x: 12-18 bytes a key, where
    a Python set of ints costs about 60-90. The dedup index is the one part of
    the pipeline that grows with the input, so its size per row matters.
    """

    MAX_LOAD = 2 / 3

    def __init__(self, capacity: int = 1 << 12):
        self._slots = array("Q", bytes(8 * capacity))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._slots.itemsize * len(self._slots)

    def _find(self, key: int) -> tuple[int, bool]:
        slots, n = self._slots, len(self._slots)
        i = (key * 0x9E3779B97F4A7C15 >> 20) % n
        while True:
            v = slots[i]
            if v == 0 or v == key:
                return i, v == key
            i = i + 1 if i + 1 < n else 0

    def __contains__(self, key: int) -> bool:
        return self._find(key or 1)[1]  # 0 marks an empty slot: key 0 is stored as 1

    def add(self, key: int) -> None:
        key = key or 1
        i, found = self._find(key)
        if found:
            return
        self._slots[i] = key
        self._count += 1
        if self._count > self.MAX_LOAD * len(self._slots):
            old, self._slots = self._slots, array("Q", bytes(8 * (len(self._slots) * 3 // 2)))
            for k in old:
                if k:
                    self._slots[self._find(k)[0]] = k


class Deduplicator:
    """Decides, row by row in read order, whether a row repeats an earlier one.

    Args:
        exact: drop rows whose content equals an earlier row's.
        near: drop rows whose MinHash bands collide with an earlier row's.
        threshold: Jaccard similarity at which near-duplicates are caught.
        num_perm: MinHash permutations.
        shingle: characters per n-gram.
    """

    def __init__(self, exact: bool = True, near: bool = True, threshold: float = 0.8,
                 num_perm: int = 64, shingle: int = 5):
        self.exact, self.near = exact, near
        self.hasher = MinHasher(num_perm, shingle)
        self.bands, self.rows = band_shape(num_perm, threshold)
        mult = np.random.default_rng(7).integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self._band_mult = mult
        self._band_salt = np.arange(self.bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        self._seen = KeySet()  # exact keys and band keys (salted per band) share one table

    def band_keys(self, text: str) -> list[int]:
        """The LSH band keys of `text` (pure: safe to compute in worker processes)."""
        if not self.near:
            return []
        sig = self.hasher.signature(text)[: self.bands * self.rows].reshape(self.bands, self.rows)
        return ((sig * self._band_mult).sum(axis=1, dtype=np.uint64) ^ self._band_salt).tolist()

    def check_keys(self, key: bytes, band_keys: list[int]) -> str | None:
        """Record a row by its content key and band keys; the drop reason
        ("exact_duplicate", "near_duplicate") or None to keep it."""
        if self.exact:
            exact = int.from_bytes(key[:8], "little")
            if exact in self._seen:
                return "exact_duplicate"
            self._seen.add(exact)
        if self.near:
            if any(k in self._seen for k in band_keys):
                return "near_duplicate"
            for k in band_keys:
                self._seen.add(k)
        return None

    @property
    def index_bytes(self) -> int:
        """Memory held by the index (the one structure that grows with the input)."""
        return self._seen.nbytes

    def check(self, key: bytes, text: str) -> str | None:
        """`check_keys` for a text whose band keys are not computed yet."""
        return self.check_keys(key, self.band_keys(text))
