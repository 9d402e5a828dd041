"""A resumable, rank-sharded, infinite batch sampler on top of ``DistributedSampler``.

The loop counts optimizer steps, not epochs, so the sampler walks epochs forever: each
epoch is ``DistributedSampler``'s permutation for (seed, epoch), this rank's share.
Starting at micro-batch ``k`` jumps straight to (epoch, offset) without loading any
data, which is what makes a resumed run see the same batches as an uninterrupted one.
Each index comes with an augmentation seed derived from (seed, epoch, position), so
augmentations are reproducible too, whatever the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler, Sampler


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start_batch: int = 0,
    ):
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.start_batch = start_batch
        self._inner = DistributedSampler(
            range(dataset_len),
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        # batches per epoch on this rank (the last partial batch is dropped so every step has a full batch)
        self.batches_per_epoch = max(1, self._inner.num_samples // batch_size)
        if self._inner.num_samples < batch_size:
            raise ValueError(
                f"{dataset_len} samples over {world_size} ranks cannot fill a batch of {batch_size}; "
                "lower run.batch_size"
            )

    def __len__(self) -> int:  # infinite in practice; DataLoader only needs a number
        return 2**62

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            self._inner.set_epoch(epoch)
            indices = list(self._inner)
            for b in range(offset, self.batches_per_epoch):
                chunk = indices[b * self.batch_size : (b + 1) * self.batch_size]
                base = (self.seed * 1_000_003 + epoch) * 1_000_003 + b * self.batch_size
                yield [(i, (base + j) * 64 + self.rank) for j, i in enumerate(chunk)]
            epoch, offset = epoch + 1, 0
