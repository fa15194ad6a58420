"""Loader: shard, shuffle, batch and prefetch samples from a Source with threads.

Threads, not processes: the per-sample work (cv2 decode/resize, h5py reads, numpy slicing)
releases the GIL, threads start instantly and share memory, and nothing needs pickling. On
ModelArts 8 ranks share a node, so each rank only needs a couple of workers.

Determinism: the epoch permutation comes from (seed, epoch) and each sample's rng from
(seed, epoch, index), so a batch's content never depends on thread timing, worker count or
prefetch depth — a resumed or re-run job sees the same data.

Data parallel needs every rank to run the same number of steps: each rank takes a strided slice
of the same permutation, truncated (drop_last) or wrapped around (not drop_last) so all slices
have the same length."""
from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from src.errors import UserError

log = logging.getLogger(__name__)


class LoaderStopped(Exception):
    """Raised inside a worker when the consumer went away; never reaches the consumer."""


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


class Loader:
    """Iterate batches of `source` for this shard.

    `batch_size` is per rank (per device). `len(loader)` is the number of batches per epoch on
    this shard, the same on every rank. Call `set_epoch(e)` before each epoch for a new
    permutation. `workers=0` loads in the consumer's thread (debugging, profiling)."""

    def __init__(self, source, batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
                 num_shards: int = 1, shard_id: int = 0, seed: int = 0, workers: int = 2,
                 prefetch: int = 4):
        if int(batch_size) < 1:
            raise UserError("data.batch_size must be >= 1, got %r" % (batch_size,))
        if not 0 <= int(shard_id) < int(num_shards):
            raise ValueError("shard_id %r out of range for num_shards %r" % (shard_id, num_shards))
        if int(workers) < 0:
            raise UserError("data.num_workers must be >= 0, got %r" % (workers,))
        self.source = source
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.num_shards = int(num_shards)
        self.shard_id = int(shard_id)
        self.seed = int(seed)
        self.workers = int(workers)
        self.prefetch = max(1, int(prefetch))
        self.epoch = 0
        self.start_batch = 0
        n = len(source)
        name = type(source).__name__
        if n == 0:
            raise UserError("data source %s has no samples: check data_url and the data set "
                            "layout" % name)
        if len(self) == 0:
            raise UserError(
                "data source %s has %d samples, too few for batch_size %d on %d rank(s) with "
                "drop_last: lower data.batch_size or add data" % (name, n, self.batch_size,
                                                                    self.num_shards))

    # -- indexing ---------------------------------------------------------------------------
    def _per_shard(self) -> int:
        n = len(self.source)
        if self.drop_last:
            return n // self.num_shards
        return -(-n // self.num_shards)

    def __len__(self) -> int:
        per = self._per_shard()
        return per // self.batch_size if self.drop_last else -(-per // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation. `start_batch` skips that many batches of it without
        loading them (a resumed run continues mid-epoch where the checkpoint was taken)."""
        self.epoch = int(epoch)
        self.start_batch = max(0, int(start_batch))

    def shard_indices(self, epoch: Optional[int] = None) -> np.ndarray:
        """Source indices this shard visits in `epoch`, in order (before batching)."""
        epoch = self.epoch if epoch is None else int(epoch)
        n = len(self.source)
        if self.shuffle:
            order = np.random.default_rng(np.random.SeedSequence([self.seed, epoch])).permutation(n)
        else:
            order = np.arange(n)
        total = self._per_shard() * self.num_shards
        if total > n:
            # Not drop_last: wrap around so every rank gets the same count (a few samples are
            # seen twice this epoch), as torch's DistributedSampler does.
            order = np.concatenate([order, np.resize(order, total - n)])
        return order[:total][self.shard_id::self.num_shards]

    def _batches(self, epoch: int) -> List[np.ndarray]:
        idx = self.shard_indices(epoch)
        count = len(self)
        return [idx[i * self.batch_size:(i + 1) * self.batch_size] for i in range(count)]

    # -- loading ----------------------------------------------------------------------------
    def _load(self, index: int, epoch: int) -> Dict[str, Any]:
        try:
            sample = self.source.load(int(index), sample_rng(self.seed, epoch, index))
        except LoaderStopped:
            raise
        except UserError as exc:
            # Same class, so start.py still prints it as one line; the sample index helps
            # reproduce it with the source alone.
            raise UserError("data sample %d: %s" % (index, exc)) from exc
        except Exception as exc:
            raise RuntimeError("loading data sample %d from %s failed: %s: %s" % (
                index, type(self.source).__name__, type(exc).__name__, exc)) from exc
        if not isinstance(sample, dict):
            raise TypeError("%s.load(%d) returned %s, expected a dict of arrays"
                            % (type(self.source).__name__, index, type(sample).__name__))
        return sample

    def _load_batch(self, indices: np.ndarray, epoch: int,
                    stop: Optional[threading.Event] = None) -> Dict[str, Any]:
        samples = []
        for index in indices:
            if stop is not None and stop.is_set():
                raise LoaderStopped()
            samples.append(self._load(index, epoch))
        return collate(samples, indices)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        epoch = self.epoch
        batches = self._batches(epoch)[self.start_batch:]
        if self.workers == 0:
            for indices in batches:
                yield self._load_batch(indices, epoch)
            return
        yield from self._threaded(batches, epoch)

    def _threaded(self, batches: List[np.ndarray], epoch: int) -> Iterator[Dict[str, Any]]:
        # A batch is one task: whole batches in flight (bounded by `prefetch`) keep the pool
        # busy while the consumer runs the train step, and results come back in order.
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="loader")
        pending: collections.deque[Future] = collections.deque()
        depth = max(self.prefetch, self.workers)
        nxt = 0
        try:
            while nxt < len(batches) and len(pending) < depth:
                pending.append(pool.submit(self._load_batch, batches[nxt], epoch, stop))
                nxt += 1
            while pending:
                batch = pending.popleft().result()
                if nxt < len(batches):
                    pending.append(pool.submit(self._load_batch, batches[nxt], epoch, stop))
                    nxt += 1
                yield batch
        finally:
            # Runs on exhaustion, on an error and when the consumer stops early (generator
            # closed): tell running tasks to stop between samples, drop queued ones, and wait,
            # so no thread outlives the iteration.
            stop.set()
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)


def collate(samples: List[Dict[str, Any]], indices=None) -> Dict[str, Any]:
    """Stack same-keyed sample dicts along a new batch axis; non-array values become lists."""
    first = samples[0]
    idx = list(indices) if indices is not None else list(range(len(samples)))
    out: Dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, (np.ndarray, np.generic, float, int)):
            ref = np.shape(value)
            for s, i in zip(samples, idx):
                if key not in s:
                    raise ValueError("data sample %d has no %r (sample %d has)" % (i, key, idx[0]))
                if np.shape(s[key]) != ref:
                    raise ValueError(
                        "data sample %d: %r has shape %s but sample %d has %s; samples in a batch "
                        "must have one size (set a crop size)" % (i, key, np.shape(s[key]),
                                                                  idx[0], ref))
            out[key] = np.stack([np.asarray(s[key]) for s in samples])
        else:
            out[key] = [s.get(key) for s in samples]
    return out
