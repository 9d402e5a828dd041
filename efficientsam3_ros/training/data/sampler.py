"""A resumable, rank-sharded, infinite batch sampler on top of ``DistributedSampler``.

The loop counts optimizer steps, not epochs, so the sampler walks epochs forever: each
epoch is ``DistributedSampler``'s permutation for (seed, epoch), this rank's share.
Starting at micro-batch ``k`` jumps straight to (epoch, offset) without loading any
data, which is what makes a resumed run see the same batches as an uninterrupted one.
Each index comes with an augmentation seed derived from (seed, epoch, position), so
augmentations are reproducible too, whatever the number of loader workers.

With ``group_keys`` (one key per index, e.g. the image file) and ``group_size`` > 1, a batch
is made of runs of up to ``group_size`` indices sharing a key: several phrases of one image
side by side, so stage 3 encodes that image once for all of them (SAM3 trains the same way,
many noun phrases per image). Every index is still drawn once per epoch, and the order is
still a pure function of (seed, epoch), so resuming works the same.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence

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
        group_keys: Sequence[Hashable] | None = None,
        group_size: int = 1,
    ):
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if group_keys is not None and len(group_keys) != dataset_len:
            raise ValueError(f"group_keys has {len(group_keys)} entries for {dataset_len} samples")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.shuffle = shuffle
        self.group_size = group_size
        self._groups: list[list[int]] | None = None
        if group_keys is not None and group_size > 1:
            members: dict[Hashable, list[int]] = defaultdict(list)
            for index, key in enumerate(group_keys):
                members[key].append(index)
            self._groups = list(members.values())
        self._inner = DistributedSampler(
            range(dataset_len),
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        # batches per epoch on this rank (the last partial batch is dropped so every step has a full
        # batch); grouped, whole batches are dealt to the ranks in turn
        if self._groups is None:
            self.batches_per_epoch = self._inner.num_samples // batch_size
        else:
            self.batches_per_epoch = dataset_len // batch_size // world_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"{dataset_len} samples over {world_size} ranks cannot fill a batch of {batch_size}; "
                "lower run.batch_size"
            )

    def __len__(self) -> int:  # infinite in practice; DataLoader only needs a number
        return 2**62

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            batches = self._epoch_batches(epoch)
            for b in range(offset, self.batches_per_epoch):
                chunk = batches[b]
                base = (self.seed * 1_000_003 + epoch) * 1_000_003 + b * self.batch_size
                yield [(i, (base + j) * 64 + self.rank) for j, i in enumerate(chunk)]
            epoch, offset = epoch + 1, 0

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of one epoch (index lists), a pure function of (seed, epoch)."""
        size = self.batch_size
        if self._groups is None:
            self._inner.set_epoch(epoch)
            indices = list(self._inner)
            return [indices[b * size : (b + 1) * size] for b in range(self.batches_per_epoch)]
        rng = random.Random(self.seed * 1_000_003 + epoch)
        runs: list[list[int]] = []
        for group in self._groups:
            group = list(group)
            if self.shuffle:
                rng.shuffle(group)
            runs += [group[i : i + self.group_size] for i in range(0, len(group), self.group_size)]
        if self.shuffle:
            rng.shuffle(runs)
        flat = [index for run in runs for index in run]
        every = [flat[b * size : (b + 1) * size] for b in range(len(flat) // size)]
        return every[self.rank :: self.world_size][: self.batches_per_epoch]
