"""Deterministic train/eval split by content hash.

A row's side depends only on its content and the seed, never on its position or
on the other rows: appending rows to a dataset leaves every old row where it was,
and an eval row can never turn up in training after a re-run.
"""

from __future__ import annotations

import hashlib


def split_of(key: bytes, eval_fraction: float, seed: int = 0) -> str:
    """ "train" or "eval" for a row with content key `key` (see data.dedup.content_key).

    Args:
        eval_fraction: share of rows (in expectation) that go to eval.
        seed: mixed into the hash; another seed gives an independent split.
    """
    if eval_fraction <= 0:
        return "train"
    digest = hashlib.blake2b(key, digest_size=8, salt=seed.to_bytes(16, "little")[:16]).digest()
    return "eval" if int.from_bytes(digest, "big") / 2**64 < eval_fraction else "train"
