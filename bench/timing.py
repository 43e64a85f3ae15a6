"""What every benchmark here does alike: contenders timed in turn, medians and ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["interleaved", "report"]


def interleaved(rounds: int, contenders: dict[str, Callable[[], None]]) -> dict[str, list[float]]:
    """Each contender once to warm up, then ``rounds`` rounds of each in turn (seconds),
    each round in the order of the one before, rotated by one."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for run in contenders.values():
        run()
    order = list(contenders.items())
    for round_number in range(rounds):
        # Each round starts with the next contender: none always follows the same one (an
        # engine's asynchronous cleanup of one run slows the run after it).
        shift = round_number % len(order)
        for name, run in order[shift:] + order[:shift]:
            started = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - started)
    return samples


def report(title: str, samples: dict[str, list[float]], baseline: str, width: int = 34) -> None:
    """The median of each contender in milliseconds and its ratio to ``baseline``'s."""
    base = statistics.median(samples[baseline])
    print(f"\n{title}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(
            f"  {name:<{width}} median {median * 1000:8.2f} ms   {median / base:5.2f}x {baseline}"
        )
