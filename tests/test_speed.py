"""speed.fastest_threads: the thread count is chosen by measurement, robust to a slow turn."""

from __future__ import annotations

import time

import torch

from charrnn import speed


def _work_costing(seconds_by_threads: dict[int, float], slow_first_calls: int = 0):
    """Work whose cost depends on the thread count; its first calls are slow, as if another
    process had taken the cores meanwhile."""
    calls = {"n": 0}

    def work() -> None:
        calls["n"] += 1
        cost = seconds_by_threads[torch.get_num_threads()]
        time.sleep(cost * 6 if calls["n"] <= slow_first_calls else cost)

    return work


def test_the_faster_count_is_chosen_and_the_setting_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert speed.fastest_threads(_work_costing({2: 0.0005, 1: 0.002})) == 2
        assert speed.fastest_threads(_work_costing({2: 0.002, 1: 0.0005})) == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_one_slow_turn_does_not_decide():
    """The first turn (two threads, measured first) is slowed as by another process: one
    turn each would pick one thread; the fastest of several turns still picks two."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        work = _work_costing({2: 0.0005, 1: 0.001}, slow_first_calls=4)
        assert speed.fastest_threads(work) == 2
    finally:
        torch.set_num_threads(before)


def test_a_single_thread_is_not_measured():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert speed.fastest_threads(lambda: (_ for _ in ()).throw(AssertionError)) == 1
    finally:
        torch.set_num_threads(before)
