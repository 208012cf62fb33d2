"""What every recipe does with its examples, as plain functions: reading them, the
seeded, rank-sharded data order (a function of the micro-batch index, so a resume
continues exactly), padding into model inputs, and the held-out loss.

Packed rows (`data` with `packing.enabled`) carry `position_ids` that restart
at every example; they go to the model with those positions, no attention mask
and no KV cache, which makes transformers attend only within each example (see
`data.packing`). Padding then starts a new position run, with no loss on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

LENGTH_GROUP_BATCHES = 50  # batches regrouped together (Hugging Face's LengthGroupedSampler uses 50)


def read_examples(path: str | Path) -> list[tuple]:
    """(input_ids, labels) per row of a tokens file or shard folder, with
    position_ids as a third item when the rows are packed."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path)).to_pydict()
    columns = [table["input_ids"], table["labels"]] + (
        [table["position_ids"]] if "position_ids" in table else []
    )
    return list(zip(*columns))


def count_examples(path: str | Path) -> int:
    """Rows of a tokens file or shard folder, from the Parquet metadata (nothing decoded)."""
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet").count_rows()


def read_eval(tokens_path: str | Path) -> list[tuple]:
    """The held-out split `data` wrote beside the training tokens; [] when there is none."""
    path = Path(tokens_path).with_name("eval.parquet")
    return read_examples(path) if path.exists() else []


def _batch_starts(n_examples: int, cfg, rank: int, world_size: int) -> list[int]:
    n, bs = len(range(rank, n_examples, world_size)), cfg.optim.batch_size
    return list(range(0, n - bs + 1 if n >= bs else 1, bs))


def micro_batches_per_epoch(n_examples: int, cfg, world_size: int) -> int:
    """Micro-batches in one pass over the smallest rank's shard (the same on every rank)."""
    return len(_batch_starts(n_examples, cfg, world_size - 1, world_size))


def data_position(index: int, n_examples: int, cfg, rank: int, world_size: int) -> tuple[int, int]:
    """(epoch, batch within the epoch) of micro-batch `index` (0-based) on this rank."""
    return divmod(index, len(_batch_starts(n_examples, cfg, rank, world_size)))


def batch_order(
    n_examples: int, cfg, rank: int, world_size: int, start: int = 0, lengths: list[int] | None = None
) -> Iterator[list[int]]:
    """This rank's micro-batches as example indices, forever, from micro-batch `start`:
    a permutation per epoch seeded by `cfg.seed`, sharded by rank.

    With `cfg.optim.group_by_length` and the examples' `lengths`, each epoch's
    batches hold the same examples, regrouped by length (`group_by_length`)."""
    import torch

    epoch, offset = data_position(start, n_examples, cfg, rank, world_size)
    starts = _batch_starts(n_examples, cfg, rank, world_size)
    bs = cfg.optim.batch_size
    grouped = getattr(cfg.optim, "group_by_length", False) and lengths is not None
    while True:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(n_examples, generator=g).tolist()[rank::world_size]
        batches = [order[i : i + bs] for i in starts]
        if grouped:
            batches = group_by_length(batches, lengths, g)
        yield from batches[offset:]
        epoch, offset = epoch + 1, 0


def group_by_length(batches: list[list[int]], lengths: list[int], generator) -> list[list[int]]:
    """The same examples in the same number of batches, regrouped so that each batch
    holds examples of similar length (less padding): windows of `LENGTH_GROUP_BATCHES`
    batches are sorted by length and cut again, then the batches are shuffled with
    `generator`, except that the one holding the longest example goes first (a batch
    that does not fit in memory fails at the first step, not hours in)."""
    import torch

    out: list[list[int]] = []
    for w in range(0, len(batches), LENGTH_GROUP_BATCHES):
        window = batches[w : w + LENGTH_GROUP_BATCHES]
        ids = sorted((i for b in window for i in b), key=lambda i: -lengths[i])
        cuts = [len(b) for b in window]
        pos = 0
        for size in cuts:
            out.append(ids[pos : pos + size])
            pos += size
    if len(out) > 1:
        perm = torch.randperm(len(out), generator=generator).tolist()
        out = [out[i] for i in perm]
        longest = max(range(len(out)), key=lambda k: max(lengths[i] for i in out[k]))
        out.insert(0, out.pop(longest))
    return out


def collate(batch, pad_id: int, device=None) -> tuple[dict, int]:
    """Model inputs for a batch of examples, right-padded, and its number of real tokens.

    Unpacked examples get an attention mask; packed ones (with position ids)
    get their position ids instead, padding as a new position run.
    """
    import torch

    width = max(len(ex[0]) for ex in batch)
    packed = len(batch[0]) > 2
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    extra = torch.zeros((len(batch), width), dtype=torch.long)  # attention mask, or position ids
    for row, ex in enumerate(batch):
        n = len(ex[0])
        ids[row, :n] = torch.tensor(ex[0])
        labels[row, :n] = torch.tensor(ex[1])
        if packed:
            extra[row, :n] = torch.tensor(ex[2])
            extra[row, n:] = torch.arange(width - n)
        else:
            extra[row, :n] = 1
    tokens = sum(len(ex[0]) for ex in batch)
    if device is not None:
        ids, labels, extra = ids.to(device), labels.to(device), extra.to(device)
    if packed:
        return {"input_ids": ids, "labels": labels, "position_ids": extra, "use_cache": False}, tokens
    return {"input_ids": ids, "labels": labels, "attention_mask": extra}, tokens


def length_groups(lengths: list[int]) -> list[list[int]]:
    """Rows of one right-padded batch, grouped so that padding each group to its own
    longest row computes the fewest tokens, where every group costs as much as a
    quarter of the whole padded batch, or one row of its longest length if more (the
    cost of a forward pass of its own): a batch is split only where that saves more
    than a quarter of its compute. One group, all rows, when splitting saves less;
    else groups of rows of similar length, shortest first.

    For example lengths [60] * 7 + [600] (a tool-call conversation among short
    answers): one pass pads 8 x 600 = 4800 tokens, two passes 7 x 60 + 600."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    longest = max(sizes, default=0)
    extra = max(longest, longest * len(sizes) // 4)
    # best[j]: least cost of the j shortest rows; cut[j]: where its last group starts.
    best, cut = [0] * (len(sizes) + 1), [0] * (len(sizes) + 1)
    for j in range(1, len(sizes) + 1):
        best[j], cut[j] = min((best[i] + extra + (j - i) * sizes[j - 1], i) for i in range(j))
    groups, j = [], len(sizes)
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def split_padded(inputs: dict) -> tuple[list[dict], int | None]:
    """An unpacked batch from `collate` as the micro-batches of `length_groups`, each cut
    to its own longest row, and the batch's number of label tokens (what each part's
    summed loss is divided by, so that the parts' losses and gradients add up to the
    whole batch's mean); None with the batch whole, when it is packed (no attention
    mask) or splitting saves too little (the model's own mean loss, as without the split)."""
    mask = inputs.get("attention_mask")
    if mask is None:
        return [inputs], None
    lengths = mask.sum(dim=1).tolist()
    groups = length_groups(lengths)
    if len(groups) == 1:
        return [inputs], None
    n_labels = int((inputs["labels"][:, 1:] != -100).sum())
    parts = []
    for rows in groups:
        width = max(lengths[r] for r in rows)
        index = mask.new_tensor(sorted(rows))
        parts.append({k: v[index, :width] for k, v in inputs.items()})
    return parts, n_labels


def evaluate(model, examples: list, batch_size: int, pad_id: int, device=None) -> float | None:
    """Mean loss per label token of `model` over `examples` (None when there are none).
    Every rank computes the same number (and takes part in every forward, as ZeRO-3 needs)."""
    import torch

    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            inputs, _ = collate(examples[i : i + batch_size], pad_id, device)
            n = int((inputs["labels"][:, 1:] != -100).sum())
            total += float(model(**inputs).loss) * n
            tokens += n
    model.train(was_training)
    return total / max(tokens, 1)


class RankData:
    """The data side of a recipe (LoraRecipe, FullRecipe): this rank's micro-batches,
    where a step is in the data, and collation. The recipe sets `cfg`, `rank`,
    `world_size`, `examples` and `pad_id`, and has `device()`."""

    batch_ids: list[int]

    def batches(self, start_step: int = 0):
        """This rank's micro-batches from micro-batch `start_step`; `batch_ids` holds the last one's."""
        for ids in batch_order(
            len(self.examples), self.cfg, self.rank, self.world_size, start_step, self.lengths()
        ):
            self.batch_ids = ids
            yield [self.examples[j] for j in ids]

    def lengths(self) -> list[int] | None:
        """Tokens of each example when `optim.group_by_length` regroups batches by them."""
        return [len(e[0]) for e in self.examples] if self.cfg.optim.group_by_length else None

    def data_position(self, index: int) -> tuple[int, int]:
        return data_position(index, len(self.examples), self.cfg, self.rank, self.world_size)

    def collate(self, batch) -> tuple[dict, int]:
        return collate(batch, self.pad_id, self.device())
