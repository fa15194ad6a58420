from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from src.data.loader import Loader, collate, sample_rng
from src.errors import UserError


class Toy:
    """index and one rng draw per sample; optional delay / failure."""

    def __init__(self, n, delay=0.0, fail_at=None, exc=ValueError):
        self.n, self.delay, self.fail_at, self.exc = n, delay, fail_at, exc
        self.loaded = []

    def __len__(self):
        return self.n

    def load(self, index, rng):
        self.loaded.append(index)
        if self.delay:
            time.sleep(self.delay)
        if index == self.fail_at:
            raise self.exc("cannot decode image /data/%d.png" % index)
        return {"index": np.array(index, np.int64),
                "x": np.full((1, 2, 2), rng.random(), np.float32)}


def _all(loader):
    return [(b["index"].tolist(), b["x"][:, 0, 0, 0].tolist()) for b in loader]


def _loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("loader")]


def test_single_shard_epoch_is_a_permutation():
    loader = Loader(Toy(10), 3, seed=1, workers=2)
    assert len(loader) == 3
    batches = list(loader)
    assert [b["x"].shape for b in batches] == [(3, 1, 2, 2)] * 3
    seen = np.concatenate([b["index"] for b in batches])
    assert len(set(seen.tolist())) == 9
    loader.set_epoch(1)
    other = np.concatenate([b["index"] for b in loader])
    assert other.tolist() != seen.tolist()


def test_no_shuffle_keeps_order_and_partial_batch():
    loader = Loader(Toy(7), 3, shuffle=False, drop_last=False, workers=0)
    assert len(loader) == 3
    assert [b["index"].tolist() for b in loader] == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("drop_last", [True, False])
def test_shards_are_disjoint_and_step_equally(drop_last):
    n, shards = 23, 4
    loaders = [Loader(Toy(n), 2, num_shards=shards, shard_id=r, seed=5, drop_last=drop_last,
                      workers=1) for r in range(shards)]
    lengths = {len(ld) for ld in loaders}
    assert len(lengths) == 1  # every rank runs the same number of steps
    idx = [ld.shard_indices(epoch=2) for ld in loaders]
    assert len({len(i) for i in idx}) == 1
    flat = np.concatenate(idx).tolist()
    if drop_last:
        assert len(flat) == len(set(flat)) == (n // shards) * shards
    else:
        assert set(flat) == set(range(n)) and len(flat) == 24  # one sample wrapped around
    got = [np.concatenate([b["index"] for b in ld]).tolist() for ld in loaders]
    assert len({len(g) for g in got}) == 1


def test_results_do_not_depend_on_workers_or_prefetch():
    ref = _all(Loader(Toy(20), 4, seed=9, workers=0))
    for workers, prefetch in [(1, 1), (3, 2), (4, 8)]:
        src = Toy(20, delay=0.001 * (workers % 2))
        assert _all(Loader(src, 4, seed=9, workers=workers, prefetch=prefetch)) == ref


def test_sample_rng_from_seed_epoch_index():
    loader = Loader(Toy(6), 1, shuffle=False, seed=4, workers=0)
    loader.set_epoch(3)
    xs = [float(b["x"][0, 0, 0, 0]) for b in loader]
    assert xs == [float(np.float32(sample_rng(4, 3, i).random())) for i in range(6)]
    assert len(set(xs)) == 6


def test_start_batch_skips_without_loading():
    src = Toy(12)
    loader = Loader(src, 3, seed=2, workers=0)
    full = _all(loader)
    loader.set_epoch(0, start_batch=2)
    src.loaded.clear()
    assert _all(loader) == full[2:]
    assert len(src.loaded) == 6
    loader.set_epoch(0)
    assert _all(loader) == full


def test_user_error_keeps_class_and_names_sample():
    loader = Loader(Toy(8, fail_at=5, exc=UserError), 2, shuffle=False, workers=2)
    with pytest.raises(UserError, match=r"data sample 5: cannot decode image /data/5.png"):
        list(loader)
    assert not _loader_threads()


def test_other_errors_carry_index_and_message():
    loader = Loader(Toy(8, fail_at=3), 2, shuffle=False, workers=2)
    with pytest.raises(RuntimeError, match=r"sample 3 from Toy failed: ValueError: cannot "):
        list(loader)
    with pytest.raises(RuntimeError, match="sample 3"):
        list(Loader(Toy(8, fail_at=3), 2, shuffle=False, workers=0))


def test_early_stop_leaves_no_threads_and_loads_little():
    src = Toy(400, delay=0.002)
    loader = Loader(src, 4, workers=2, prefetch=2)
    for i, _ in enumerate(loader):
        if i == 1:
            break
    assert not _loader_threads()
    assert len(src.loaded) < 40  # the queue is bounded; stopping stopped the workers


def test_too_few_samples_and_empty_source():
    with pytest.raises(UserError, match="too few for batch_size 4 on 2 rank"):
        Loader(Toy(5), 4, num_shards=2)
    with pytest.raises(UserError, match="no samples"):
        Loader(Toy(0), 1)
    with pytest.raises(UserError, match="batch_size"):
        Loader(Toy(3), 0)


def test_collate_shape_mismatch_names_samples():
    a = {"x": np.zeros((3, 4, 4)), "name": "a"}
    b = {"x": np.zeros((3, 5, 4)), "name": "b"}
    with pytest.raises(ValueError, match=r"sample 8: 'x' has shape \(3, 5, 4\) but sample 7"):
        collate([a, b], [7, 8])
    out = collate([a, a])
    assert out["x"].shape == (2, 3, 4, 4) and out["name"] == ["a", "a"]
