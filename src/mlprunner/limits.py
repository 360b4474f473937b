"""Short runs for debugging (configs/debug): fewer batches per epoch, or a few batches to overfit.

- `trainer.limit_train_batches=N`: train on the first N batches' worth of training samples (a
  fixed subset, reshuffled each epoch); `limit_val_batches` / `limit_test_batches`: validate and
  test on the first N batches of trainer.eval_batch_size samples.
- `trainer.overfit_batches=N`: train on the first N batches of samples, in the same order every
  epoch and without augmentation, and validate on those same samples: a model that can learn
  reaches (close to) zero training error.

The data are cut once, after they are built, so every epoch (and the progress bar, the
scheduler's step count aside) sees the shorter splits.
"""

from __future__ import annotations

import dataclasses

import torch
from omegaconf import DictConfig

from .data import Data, Split, StreamSplit


def first(split, n: int):
    """The first `n` samples of a split (the split itself when it is no longer)."""
    if split is None or n >= len(split):
        return split
    if isinstance(split, Split):
        return Split(split.x[:n], split.y[:n])
    assert isinstance(split, StreamSplit)
    subset = torch.utils.data.Subset(split.dataset, range(n))
    return StreamSplit(subset, split.device, split.mean, split.std, split.num_workers)


def overfitting(trainer_cfg: DictConfig) -> bool:
    return bool(trainer_cfg.get("overfit_batches"))


def limit_data(data: Data, trainer_cfg: DictConfig) -> Data:
    """`data` cut to the trainer's limit_*_batches / overfit_batches (unchanged when none is set)."""
    bs, ebs = int(trainer_cfg.batch_size), int(trainer_cfg.eval_batch_size)
    overfit = trainer_cfg.get("overfit_batches")
    limits = {k: trainer_cfg.get(f"limit_{k}_batches") for k in ("train", "val", "test")}
    if not overfit and not any(limits.values()):
        return data
    if overfit:
        train = first(data.train, int(overfit) * bs)
        val = train if data.val is not None else None
    else:
        train = first(data.train, int(limits["train"]) * bs) if limits["train"] else data.train
        val = first(data.val, int(limits["val"]) * ebs) if limits["val"] else data.val
    load_test = data.load_test
    if load_test is not None and limits["test"]:
        n_test, full = int(limits["test"]) * ebs, load_test

        def load_test():
            return first(full(), n_test)

    return dataclasses.replace(data, train=train, val=val, load_test=load_test)
