"""What both recipes do with their examples: reading them, the seeded,
rank-sharded data order (a function of the micro-batch index, so a resume
continues exactly), padding into model inputs, and the held-out loss.

Packed rows (`data` with `packing.enabled`) carry `position_ids` that restart
at every example; they go to the model with those positions, no attention mask
and no KV cache, which makes transformers attend only within each example (see
`data.packing`). Padding then starts a new position run, with no loss on it.
"""

from __future__ import annotations

from pathlib import Path


class ExampleFeed:
    """Mixin. Needs `cfg`, `rank`, `world_size`, `examples`, `eval_examples`,
    `pad_id`, and `module()` (the model to run: the PEFT model or the DeepSpeed engine)."""

    batch_ids: list[int]

    def module(self):
        raise NotImplementedError

    def device(self):
        """Where batches go (None: stay on the CPU)."""
        return

    def batches(self, start_step: int = 0):
        """Yield this rank's micro-batches forever, from micro-batch `start_step`: seeded
        permutation per epoch, sharded by rank. `self.batch_ids` holds the example
        indices of the batch last yielded."""
        epoch, offset = self.data_position(start_step)
        while True:
            order = self._epoch_order(epoch)
            for i in self._batch_starts()[offset:]:
                self.batch_ids = order[i:i + self.cfg.optim.batch_size]
                yield [self.examples[j] for j in self.batch_ids]
            epoch, offset = epoch + 1, 0

    def data_position(self, index: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of micro-batch `index` (0-based) on this rank."""
        return divmod(index, len(self._batch_starts()))

    def _epoch_order(self, epoch: int) -> list[int]:
        import torch

        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.examples), generator=g).tolist()[self.rank::self.world_size]

    def _batch_starts(self) -> list[int]:
        n, bs = len(self.examples[self.rank::self.world_size]), self.cfg.optim.batch_size
        return list(range(0, n - bs + 1 if n >= bs else 1, bs))

    def load_eval(self, tokens_path: str | Path) -> None:
        """The held-out split `data` wrote beside the training tokens, if any."""
        path = Path(tokens_path).with_name("eval.parquet")
        self.eval_examples = read_examples(path) if path.exists() else []

    def evaluate(self) -> float | None:
        """Mean loss per label token over the whole held-out split. Every rank
        computes the same number (and takes part in every forward, as ZeRO-3 needs)."""
        import torch

        if not self.eval_examples:
            return None
        model = self.module()
        was_training = model.training
        model.eval()
        total, tokens = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.eval_examples), self.cfg.optim.batch_size):
                inputs, _ = self.collate(self.eval_examples[i:i + self.cfg.optim.batch_size])
                n = int((inputs["labels"][:, 1:] != -100).sum())
                total += float(model(**inputs).loss) * n
                tokens += n
        model.train(was_training)
        return total / max(tokens, 1)

    def collate(self, batch) -> tuple[dict, int]:
        """Model inputs for a batch of examples, right-padded, and its number of real tokens.

        Unpacked examples get an attention mask; packed ones (with position ids)
        get their position ids instead, padding as a new position run.
        """
        import torch

        width = max(len(ex[0]) for ex in batch)
        packed = len(batch[0]) > 2
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
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
        device = self.device()
        if device is not None:
            ids, labels, extra = ids.to(device), labels.to(device), extra.to(device)
        if packed:
            return {"input_ids": ids, "labels": labels, "position_ids": extra, "use_cache": False}, tokens
        return {"input_ids": ids, "labels": labels, "attention_mask": extra}, tokens


def read_examples(path: str | Path) -> list[tuple]:
    """(input_ids, labels) per row of a tokens file or shard folder, with
    position_ids as a third item when the rows are packed."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path)).to_pydict()
    columns = [table["input_ids"], table["labels"]] + ([table["position_ids"]] if "position_ids" in table else [])
    return list(zip(*columns))
