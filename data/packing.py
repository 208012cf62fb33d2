"""Packing tokenised examples into fixed-length sequences, with no attention and
no loss across the examples that share a sequence.

A packed row has the columns of an unpacked one (`input_ids`, `labels`) plus:

- `position_ids`: 0, 1, 2, ... restarting at every example. Transformers (5.x)
  reads a restart as an example boundary and builds a block-diagonal causal
  mask when the model gets `position_ids` with `attention_mask=None` and no
  KV cache (`use_cache=False`); flash-attention varlen kernels use the same
  boundaries. Every example so sees the same positions and context as alone.
- `example_lengths`: tokens of each example in order (cu_seqlens for kernels
  that want them; `segment_ids` follow from it).

The first label of every example is -100: a causal LM's loss at that position
would predict the example's first token from the previous example's end.

Bins are filled first-fit among `open_bins` open sequences (streaming, bounded
memory); when an example fits none, the fullest bin is written out. A sequence
is never padded here: the last ones may be shorter than `length`, and a
collator pads with a new position run (0, 1, ...) and labels -100.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from data.chat import IGNORE_INDEX


class Packer:
    """First-fit packing into sequences of at most `length` tokens.

    Args:
        length: tokens per sequence; every example must be at most this long.
        open_bins: sequences kept open at a time.
    """

    def __init__(self, length: int, open_bins: int = 8):
        self.length, self.open_bins = length, open_bins
        self._bins: list[list[tuple[Sequence[int], Sequence[int]]]] = []
        self._fill: list[int] = []

    def add(self, input_ids: Sequence[int], labels: Sequence[int]) -> Iterator[dict[str, np.ndarray]]:
        """Add one example; yields the sequences this completes.

        Raises:
            ValueError: the example is longer than `length`.
        """
        n = len(input_ids)
        if n > self.length:
            raise ValueError(f"example of {n} tokens does not fit a packed sequence of {self.length}")
        for i, fill in enumerate(self._fill):
            if fill + n <= self.length:
                self._bins[i].append((input_ids, labels))
                self._fill[i] += n
                if self._fill[i] == self.length:
                    yield self._emit(i)
                return
        if len(self._bins) >= self.open_bins:
            yield self._emit(max(range(len(self._fill)), key=self._fill.__getitem__))
        self._bins.append([(input_ids, labels)])
        self._fill.append(n)
        if n == self.length:
            yield self._emit(len(self._bins) - 1)

    def flush(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield the sequences still open."""
        while self._bins:
            yield self._emit(0)

    def _emit(self, i: int) -> dict[str, np.ndarray]:
        examples = self._bins.pop(i)
        self._fill.pop(i)
        return pack_examples(examples)


def pack_examples(examples: list[tuple[Sequence[int], Sequence[int]]]) -> dict[str, np.ndarray]:
    """One packed row (int32 arrays) from (input_ids, labels) pairs, in order."""
    lengths = np.array([len(ids) for ids, _ in examples], dtype=np.int32)
    starts = np.cumsum(lengths) - lengths
    labels = np.concatenate([np.asarray(lab, dtype=np.int32) for _, lab in examples])
    labels[starts] = IGNORE_INDEX
    return {
        "input_ids": np.concatenate([np.asarray(ids, dtype=np.int32) for ids, _ in examples]),
        "labels": labels,
        "position_ids": np.arange(lengths.sum(), dtype=np.int32)
        - np.repeat(starts, lengths).astype(np.int32),
        "example_lengths": lengths,
    }
