"""Synthetic loader: one random batch made once on the device, for model-only speed (the compute ceiling)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pipeline.base import Batch, Loader, epoch_seed


class SyntheticLoader(Loader):
    """Yields the same random batch `len(self)` times; no reading, decoding or copying. The batch
    is made once per image size, so no host work runs between batches."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._made: tuple[int, Batch] | None = None  # (image size px, the batch)

    def epoch(self, epoch: int, skip: int = 0, position: bytes | None = None) -> Iterator[Batch]:
        size = self.size_at(epoch)
        if self._made is None or self._made[0] != size:
            g = torch.Generator(self.device).manual_seed(epoch_seed(self.cfg.seed, 0, self.rank))
            c = 4 if self.cfg.pad_channels else 3
            images = torch.randn(self.batch_size, size, size, c, generator=g, device=self.device)
            labels = torch.randint(self.num_classes, (self.batch_size,), generator=g, device=self.device)
            self._made = size, (images.half().permute(0, 3, 1, 2), labels)  # NHWC storage: channels-last
        for _ in range(len(self) - skip):
            yield self._made[1]
