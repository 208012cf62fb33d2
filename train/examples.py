"""What both recipes do with their examples: the seeded, rank-sharded data order
(a function of the micro-batch index, so a resume continues exactly), padding
into tensors, and the held-out loss."""

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
        import pyarrow.parquet as pq

        path = Path(tokens_path).with_name("eval.parquet")
        table = pq.read_table(str(path)).to_pydict() if path.exists() else {"input_ids": [], "labels": []}
        self.eval_examples = list(zip(table["input_ids"], table["labels"]))

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
                ids, labels, mask = self.collate(self.eval_examples[i:i + self.cfg.optim.batch_size])
                n = int((labels[:, 1:] != -100).sum())
                total += float(model(input_ids=ids, attention_mask=mask, labels=labels).loss) * n
                tokens += n
        model.train(was_training)
        return total / max(tokens, 1)

    def collate(self, batch):
        """Right-padded input ids, labels (-100 where no loss) and attention mask."""
        import torch

        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (x, y) in enumerate(batch):
            ids[row, :len(x)] = torch.tensor(x)
            labels[row, :len(y)] = torch.tensor(y)
            mask[row, :len(x)] = 1
        device = self.device()
        if device is not None:
            return ids.to(device), labels.to(device), mask.to(device)
        return ids, labels, mask
