"""Lightning add-ons that make training crash-safe and reproducible; the training configs wire them in.

- :class:`TrainingRandomState` (``callbacks/default.yaml``): seeds the augmentation of every sample from
  ``(seed, epoch, index)`` and stores the random state (Python, NumPy, torch, CUDA) in every checkpoint, so
  that the same seed gives the same weights and a resumed run equals an uninterrupted one on the CPU.
- :class:`AtomicCheckpointIO` (``trainer/default.yaml``): writes checkpoints atomically in their own folder
  and refuses an empty or truncated checkpoint with a message naming it.
- :class:`ResumableCSVLogger` (``logger/csv.yaml``): a CSV logger that appends to the ``metrics.csv`` of the
  run it resumes instead of deleting it.
"""

from __future__ import annotations

import csv
import io
import logging
import pickle
import random
import zipfile
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import get_filesystem
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import ConcatDataset, DataLoader

from cxrnet.checkpoint import (
    CheckpointError,
    atomic_write,
    check_checkpoint_file,
    check_pickle_stream,
    pickle_stream,
)

__all__ = ["AtomicCheckpointIO", "ResumableCSVLogger", "TrainingRandomState"]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------- random state


class TrainingRandomState(pl.Callback):
    """Same seed, same weights; resume from an epoch-end checkpoint, same weights as never stopping (CPU).

    Every random draw of a training epoch comes from three places, and each is pinned down:

    - the global generators (Python ``random``, NumPy, torch CPU and CUDA): dropout, the shuffling sampler's
      order and the DataLoader workers' seeds all derive from torch's. Their state is stored in every
      checkpoint and restored when the checkpoint is loaded, before the first epoch's DataLoader iterator
      draws from them (Lightning's sanity check in between runs with isolated generators). Loaders with
      persistent workers draw less after their first epoch; that difference is evened out
      (:meth:`_draw_like_a_fresh_iterator`);
    - the augmentation pipeline, which keeps its own generators: each sample is augmented from
      ``(seed, epoch, index)`` through :meth:`cxrnet.data.dataset.CXRDataset.set_epoch`, whatever the worker
      count or the sampler's order. The epoch is set before each epoch's iterator is created (Lightning
      creates the first one of a fit before ``on_train_epoch_start``, so that one is set at setup and when the
      checkpoint is loaded);
    - class-balanced sampling (:class:`cxrnet.datamodule.ClassBalancedSampler`), which draws from
      ``(seed, epoch)`` already.

    A resume equals an uninterrupted run when it starts from a checkpoint written at the end of an epoch (what
    the ``last.ckpt`` and ``best.ckpt`` callbacks write); from a mid-epoch checkpoint it warns. With
    class-balanced sampling and DataLoader workers, the workers prefetch the first resumed epoch before
    Lightning calls the sampler's ``set_epoch``; the sampler then draws for the train dataset's epoch, which
    this callback has restored by that time. Under DDP every rank starts
    from the same seed and draws alike, so rank 0's state is restored on every rank.

    Args:
        seed: the run's seed (``seed`` in ``train.yaml``).
    """

    STATE_VERSION = 1

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._trainer: pl.Trainer | None = None
        self._iterated: set[int] = set()  # ids of the persistent-worker loaders iterated in this fit

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._set_epoch(trainer.current_epoch)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._iterated = set()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before the epoch's DataLoader iterator exists (from the second epoch of a fit on), so that every
        # worker, persistent or not, augments with the new epoch.
        self._set_epoch(trainer.current_epoch)
        self._draw_like_a_fresh_iterator(_loaders(trainer.train_dataloader), trainer)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw_like_a_fresh_iterator(_loaders(trainer.val_dataloaders), trainer)

    def _draw_like_a_fresh_iterator(self, loaders: list[DataLoader], trainer: pl.Trainer) -> None:
        """Draw from torch's generator as a fresh iterator of each reused persistent-worker loader would.

        A fresh DataLoader iterator draws its workers' base seed from torch's generator; a loader with
        persistent workers makes one only the first time it is iterated in a fit and reuses it after. The
        first epoch after a resume therefore draws once more than the same epoch of an uninterrupted run, and
        every later draw (shuffling, dropout) would be shifted. Drawing that number for every reused iterator
        keeps both runs in step (the sanity check runs with isolated generators: it only marks its loaders).
        """
        for loader in loaders:
            if loader.num_workers == 0 or not loader.persistent_workers or loader.generator is not None:
                continue
            if id(loader) in self._iterated and not trainer.sanity_checking:
                torch.empty((), dtype=torch.int64).random_()
            self._iterated.add(id(loader))

    def _set_epoch(self, epoch: int) -> None:
        for dataset in _train_datasets(self._trainer):
            dataset.set_epoch(epoch, self.seed)

    def state_dict(self) -> dict[str, Any]:
        """The random state now (checkpoints call this while they are written), with what it belongs to."""
        trainer = self._trainer
        loop = trainer.fit_loop.epoch_loop if trainer is not None else None
        return {
            "version": self.STATE_VERSION,
            "seed": self.seed,
            "epoch": trainer.current_epoch if trainer is not None else None,
            "global_step": trainer.global_step if trainer is not None else None,
            "epoch_finished": bool(loop is not None and loop.batch_progress.is_last_batch),
            "sampler": _sampler_state(trainer),
            "rng": _get_rng_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the random state of the checkpoint now, and the augmentation epoch that follows it."""
        if state_dict.get("version") != self.STATE_VERSION or "rng" not in state_dict:
            rank_zero_warn(
                "the checkpoint holds no random state this cxrnet can restore: the resumed run continues, "
                "but will not equal an uninterrupted one"
            )
            return
        if state_dict.get("seed") != self.seed:
            rank_zero_warn(
                f"resuming a run trained with seed={state_dict.get('seed')} under seed={self.seed}: the "
                f"augmentation will differ from the uninterrupted run; pass seed={state_dict.get('seed')} "
                "to continue it exactly"
            )
        finished = bool(state_dict.get("epoch_finished", True))
        if not finished:
            rank_zero_warn(
                f"the checkpoint was written in the middle of epoch {state_dict.get('epoch')}: the resumed "
                "run restarts that epoch's data and will not equal an uninterrupted run; resume from an "
                "epoch-end checkpoint (checkpoints/last.ckpt) for that"
            )
        _set_rng_state(state_dict["rng"])
        if state_dict.get("epoch") is not None:
            self._set_epoch(int(state_dict["epoch"]) + int(finished))


def _get_rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain values (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    # The legacy global generator is what third-party code and seed_everything use: its state is the one kept.
    numpy_state = np.random.get_state(legacy=False)  # noqa: NPY002
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            numpy_state["key"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loaders(node: Any) -> list[DataLoader]:
    """The DataLoaders in what ``trainer.train_dataloader`` / ``val_dataloaders`` give (None before setup)."""
    if isinstance(node, DataLoader):
        return [node]
    values = node.values() if isinstance(node, dict) else node if isinstance(node, list | tuple) else []
    return [loader for value in values for loader in _loaders(value)]


def _train_datasets(trainer: pl.Trainer | None) -> Iterator[Any]:
    """The training datasets that take an augmentation epoch: from the loaders, or before they exist, from the
    datamodule (``datasets["train"]`` of :class:`cxrnet.datamodule.CXRDataModule`)."""

    def walk(dataset: Any) -> Iterator[Any]:
        if isinstance(dataset, ConcatDataset):
            for part in dataset.datasets:
                yield from walk(part)
        elif callable(getattr(dataset, "set_epoch", None)):
            yield dataset

    loaders = _loaders(trainer.train_dataloader) if trainer is not None else []  # none before setup
    if loaders:
        for loader in loaders:
            yield from walk(loader.dataset)
    elif trainer is not None and trainer.datamodule is not None:
        datasets = getattr(trainer.datamodule, "datasets", None)
        if isinstance(datasets, dict) and datasets.get("train") is not None:
            yield from walk(datasets["train"])


def _sampler_state(trainer: pl.Trainer | None) -> list[dict[str, Any]]:
    """What fixes the order of the training data, per training loader (a record for the checkpoint's reader).

    A shuffling sampler draws from torch's generator (whose state is stored); class-balanced sampling from
    its seed and the epoch.
    """
    loaders = _loaders(trainer.train_dataloader) if trainer is not None else []
    samplers = []
    for sampler in (loader.sampler for loader in loaders):
        samplers.append(
            {
                "type": type(sampler).__name__,
                "seed": getattr(sampler, "seed", None),
                "epoch": getattr(sampler, "epoch", None),
            }
        )
    return samplers


# -------------------------------------------------------------------------------------- checkpoints


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint IO that never leaves a partial checkpoint, and refuses one with a message naming the file.

    Lightning's default writes through an fsspec transaction whose temporary file lives in ``$TMPDIR``: when
    that is another file system (``/tmp`` on tmpfs, a node-local disk) the final "rename" is a copy, and a
    kill during it leaves a truncated ``last.ckpt`` and an orphaned temporary file. Here the temporary file is
    written in the checkpoint's own folder, fsynced and renamed over the old file
    (:func:`cxrnet.checkpoint.atomic_write`). Remote paths (``s3://`` and the like) keep Lightning's
    behaviour.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options; use a CheckpointIO for remote storage"
            )
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_write(path, lambda handle: self.write(checkpoint, handle))

    def write(self, checkpoint: dict[str, Any], handle: IO[bytes]) -> None:
        """Serialise ``checkpoint`` into the open temporary file (override to change the format)."""
        torch.save(checkpoint, handle)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load like Lightning, but fail with a :class:`~cxrnet.checkpoint.CheckpointError` naming the file.

        Raises:
            CheckpointError: the file is missing, empty, truncated or unreadable.
        """
        if _is_local(path):
            check_checkpoint_file(path)
            check_pickle_stream(
                pickle_stream(path), path
            )  # a crafted key that hashes forever, before unpickling
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (EOFError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(
                f"cannot resume from checkpoint {path}: {reason}; it is damaged or not a Lightning "
                "checkpoint: resume from another one or start afresh"
            ) from err


def _is_local(path: _PATH) -> bool:
    return get_filesystem(path).protocol in ("file", "local", ("file", "local"))


# ------------------------------------------------------------------------------------------ logging


class ResumableCSVLogger(CSVLogger):
    """:class:`~pytorch_lightning.loggers.CSVLogger` that keeps the ``metrics.csv`` of the run it continues.

    Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts, so resuming a run into its own
    folder wipes the history of the epochs before the crash. This one appends. Rows logged by the earlier run
    at or after the first step the new run logs (the interrupted part of an epoch, which is redone) are
    dropped, so a resumed run's file equals an uninterrupted run's; a fresh run in the same folder therefore
    replaces the old rows, as before. Rewrites of the file are atomic.

    Takes the arguments of :class:`~pytorch_lightning.loggers.CSVLogger`.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    """The CSV writer of :class:`ResumableCSVLogger`: appends, superseding the rows a resumed run redoes."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._supersede = self._fs.isfile(self.metrics_file_path)
        if self._supersede:
            self.metrics_keys = sorted(self._read()[0])

    def _check_log_dir_exists(self) -> None:
        """Keep what an earlier run wrote (Lightning deletes ``metrics.csv`` here)."""

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._supersede:
            self._supersede = False
            self._drop_rows_from(len(self.metrics) if step is None else int(step))
        super().log_metrics(metrics_dict, step)

    def _read(self) -> tuple[list[str], list[dict[str, Any]]]:
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return list(reader.fieldnames or []), rows

    def _drop_rows_from(self, step: int) -> None:
        fields, rows = self._read()
        # A row cut short by a kill mid-append lacks fields (None): drop it, or the next append joins it.
        kept = [row for row in rows if _step_of(row) < step and None not in row.values() and None not in row]
        if len(kept) == len(rows):
            return
        log.info(
            "%s: %d rows from step %d on belong to the part of the earlier run that this run redoes; dropped",
            self.metrics_file_path,
            len(rows) - len(kept),
            step,
        )
        self._write_all(fields, kept)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        self._write_all(fieldnames, self._read()[1])

    def _write_all(self, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
        """Replace the file, atomically where it is local: a kill mid-rewrite must not lose the history."""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        if _is_local(self.metrics_file_path):
            atomic_write(self.metrics_file_path, lambda handle: handle.write(text.getvalue().encode()))
        else:
            with self._fs.open(self.metrics_file_path, "w", newline="") as handle:
                handle.write(text.getvalue())


def _step_of(row: dict[str, Any]) -> float:
    """The row's step; a row without one is kept (it sorts before every step)."""
    try:
        return float(row.get("step") or "-inf")
    except ValueError:
        return float("-inf")
