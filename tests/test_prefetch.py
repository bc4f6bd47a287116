"""Device prefetch of train batches and background export writes."""

from __future__ import annotations

import json
import threading

import pytest

from f3_jax import exports
from f3_jax.prefetch import DevicePrefetch


class CountingIterator:
    """Batches 0, 1, 2, ...; its state is the number of batches handed out."""

    def __init__(self):
        self.n = 0
        self.closed = False

    def __next__(self):
        self.n += 1
        return {"i": self.n - 1}

    def get_state(self):
        return {"n": self.n}

    def close(self):
        self.closed = True


@pytest.mark.parametrize("size", [0, 1, 3])
def test_prefetch_yields_every_batch_once_in_order(size):
    it = CountingIterator()
    moved = []
    batches = DevicePrefetch(it, lambda local: moved.append(local["i"]) or {"x": local["i"]}, size)
    got = []
    for _ in range(6):
        local, batch = next(batches)
        assert batch == {"x": local["i"]}
        got.append(local["i"])
        batches.read_ahead()
        assert it.n == len(got) + size  # `size` batches wait on the devices
    assert got == list(range(6))
    assert moved == list(range(6 + size))  # each put on the devices once, in order


def test_saved_state_is_the_last_consumed_batch_not_the_last_read():
    it = CountingIterator()
    batches = DevicePrefetch(it, dict, size=2)
    assert json.loads(batches.saved_state().get_state()) == {"n": 0}
    next(batches)
    batches.read_ahead()
    next(batches)
    batches.read_ahead()
    saved = batches.saved_state()
    assert it.n == 4 and batches.state() == {"n": 2}
    next(batches)  # the loop moves on before an async save reads the state
    assert json.loads(saved.get_state()) == {"n": 2}
    batches.close()
    assert it.closed


def test_negative_size_is_an_error():
    with pytest.raises(ValueError, match="prefetch size -1"):
        DevicePrefetch(CountingIterator(), dict, -1)


def test_background_writes_run_in_order_off_the_caller_thread():
    writes = exports.BackgroundWrites()
    done, threads, gate = [], [], threading.Event()

    def write(i):
        def run():
            gate.wait(10)
            threads.append(threading.current_thread().name)
            done.append(i)

        return run

    writes.submit(write(1))
    assert done == []  # submit returns before the write ran
    gate.set()
    writes.submit(write(2))  # waits for the first
    writes.close()
    assert done == [1, 2]
    assert all(name.startswith("f3_export") for name in threads)


def test_background_write_failure_is_raised():
    writes = exports.BackgroundWrites()

    def fail():
        raise OSError("disk full at export/weights.safetensors")

    writes.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writes.wait()
    writes.close()
