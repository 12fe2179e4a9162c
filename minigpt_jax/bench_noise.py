"""How far a bench's timings can be trusted: the load on the machine, the spread of each
method's samples, and which ratios are noise (bench.py and bench_sample.py print these)."""

from __future__ import annotations

import os
import statistics

# A ratio of two medians is flagged unreliable when either side's samples spread, max - min,
# over more than this share of their median: on a quiet machine they stay within a few percent,
# and a loaded one once printed "971.2x PyTorch".
SPREAD_LIMIT = 0.25
UNRELIABLE = "unreliable"


def rel_spread(times: list[float]) -> float:
    """(max - min) / median of one method's timed samples: how far apart they landed."""
    return (max(times) - min(times)) / statistics.median(times)


def unreliable(*samples: list[float]) -> bool:
    """Whether a ratio of these samples' medians is noise: one of them spreads too far."""
    return any(rel_spread(s) > SPREAD_LIMIT for s in samples if s)


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): other work competing for cores."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def describe_conditions(load_before: float | None, spreads: dict[str, float], n: int) -> str:
    """The lines a bench prints under its table: load, each method's spread, what is flagged."""
    after = load_average()
    load = "unknown" if load_before is None else f"{load_before:.2f} before, {after:.2f} after"
    lines = [f"load average (1 min): {load}, on {os.cpu_count()} CPUs"]
    listed = ", ".join(f"{name} {100 * v:.0f}%" for name, v in spreads.items())
    lines.append(f"spread of the {n} timed samples, (max - min) / median: {listed}")
    if n < 2:
        lines.append("one sample has no spread: ratios cannot be judged; take more repeats")
    elif any(v > SPREAD_LIMIT for v in spreads.values()):
        lines.append(
            f"samples spread over {100 * SPREAD_LIMIT:.0f}% of their median: the machine was "
            f"busy, the timings are noise and ratios from them are marked {UNRELIABLE}; rerun "
            "when it is quiet"
        )
    return "\n".join(lines)
