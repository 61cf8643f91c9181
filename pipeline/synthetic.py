"""Synthetic loader: one random batch kept on the device, for model-only speed (the compute ceiling)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pipeline.loader import Batch, Loader, epoch_seed


class SyntheticLoader(Loader):
    """Yields the same random batch `len(self)` times; no reading, decoding or copying."""

    def epoch(self, epoch: int) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, epoch, self.rank))
        c = 4 if self.cfg.pad_channels else 3
        s = self.image_size
        images = torch.randn(self.batch_size, c, s, s, generator=g).to(
            self.device, torch.float16, memory_format=torch.channels_last)
        labels = torch.randint(self.num_classes, (self.batch_size,), generator=g).to(self.device)
        for _ in range(len(self)):
            yield images, labels
