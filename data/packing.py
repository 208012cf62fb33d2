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

from collections.abc import Iterator

from data.chat import IGNORE_INDEX


class Packer:
    """First-fit packing into sequences of at most `length` tokens.

    Args:
        length: tokens per sequence; every example must be at most this long.
        open_bins: sequences kept open at a time.
    """

    def __init__(self, length: int, open_bins: int = 8):
        self.length, self.open_bins = length, open_bins
        self._bins: list[list[tuple[list[int], list[int]]]] = []
        self._fill: list[int] = []

    def add(self, input_ids: list[int], labels: list[int]) -> Iterator[dict[str, list[int]]]:
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

    def flush(self) -> Iterator[dict[str, list[int]]]:
        """Yield the sequences still open."""
        while self._bins:
            yield self._emit(0)

    def _emit(self, i: int) -> dict[str, list[int]]:
        examples = self._bins.pop(i)
        self._fill.pop(i)
        return pack_examples(examples)


def pack_examples(examples: list[tuple[list[int], list[int]]]) -> dict[str, list[int]]:
    """One packed row from (input_ids, labels) pairs, in order."""
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": [], "example_lengths": []}
    for ids, labels in examples:
        row["input_ids"] += ids
        row["labels"] += [IGNORE_INDEX] + labels[1:]
        row["position_ids"] += list(range(len(ids)))
        row["example_lengths"].append(len(ids))
    return row
