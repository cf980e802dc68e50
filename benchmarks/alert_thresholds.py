"""Stance-shift thresholds on simulated actors: false alerts vs. detection delay.

Not a speed benchmark: it replays synthetic (actor, topic) timelines through
``pipeline.detect`` for a few threshold settings and prints, per setting,

- false alerts per actor-year for *stable* actors whose stance labels are wrong with a
  given probability (classifier noise), at several mention cadences;
- the share of *real* shifts (oppose -> support, same noise) detected, and the median
  delay in days from the true change to the alert.

Run: ``.venv/bin/python benchmarks/alert_thresholds.py [--actors 40]``. Results and the
choice made from them are in docs/decisions.md ("Alerts").
"""

from __future__ import annotations

import argparse
import random
import statistics
from datetime import UTC, datetime, timedelta

from pipeline.config import StanceShiftSettings
from pipeline.detect import StanceRecord, find_stance_shifts

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def timeline(
    rng: random.Random, *, days: int, every: float, noise: float, change_day: int | None
) -> list[StanceRecord]:
    out = []
    t = rng.uniform(0, every)
    n = 0
    while t < days:
        true = "support" if change_day is not None and t >= change_day else "oppose"
        stance = true if rng.random() >= noise else ("support" if true == "oppose" else "oppose")
        out.append(
            StanceRecord(
                time=T0 + timedelta(days=t),
                actor="A",
                topic="territorial_concessions",
                stance=stance,
                score=rng.uniform(0.55, 0.95),
                cluster_id=f"c{n}",
                article_id=f"a{n}",
            )
        )
        n += 1
        t += rng.expovariate(1 / every)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=40, help="Simulated actors per cell")
    args = parser.parse_args()
    settings = {
        "p.05 m3 share.6 (issue default)": StanceShiftSettings(),
        "p.01 m3 share.6": StanceShiftSettings(max_p_value=0.01),
        "p.05 m4 share.6": StanceShiftSettings(min_mentions_recent=4, min_mentions_baseline=4),
        "p.05 m3 share.7": StanceShiftSettings(min_share=0.7),
        "p.01 m3 share.7": StanceShiftSettings(max_p_value=0.01, min_share=0.7),
        "p.01 m4 share.7": StanceShiftSettings(
            max_p_value=0.01, min_share=0.7, min_mentions_recent=4, min_mentions_baseline=4
        ),
    }
    days = 365
    print(
        f"{'setting':34} {'noise':>5} {'every':>5} {'FP/actor-yr':>11} {'found':>6} {'delay d':>7}"
    )
    for name, s in settings.items():
        for noise in (0.1, 0.2, 0.3):
            for every in (1.0, 2.0, 4.0):
                rng = random.Random(f"{noise}-{every}")
                fp = 0
                found = 0
                delays: list[float] = []
                for _ in range(args.actors):
                    stable = timeline(rng, days=days, every=every, noise=noise, change_day=None)
                    now = T0 + timedelta(days=days)
                    fp += len(find_stance_shifts(stable, s, now=now))
                    change = 200
                    moving = timeline(rng, days=days, every=every, noise=noise, change_day=change)
                    hits = [
                        x
                        for x in find_stance_shifts(moving, s, now=now)
                        if x.to_stance == "support" and x.window_end >= T0 + timedelta(days=change)
                    ]
                    if hits:
                        found += 1
                        delays.append((hits[0].window_end - T0).total_seconds() / 86400 - change)
                delay = f"{statistics.median(delays):.1f}" if delays else "-"
                print(
                    f"{name:34} {noise:5.1f} {every:5.1f} {fp / args.actors:11.2f} "
                    f"{found / args.actors:6.0%} {delay:>7}"
                )


if __name__ == "__main__":
    main()
