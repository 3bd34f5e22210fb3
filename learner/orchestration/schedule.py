"""ERPO temperature schedule (docs/algorithms.md §2): T_i = min(T0 + Ts * H_i, Tmax)."""

from __future__ import annotations

from pipeline.config import ScheduleConfig


def temperature(h: int, cfg: ScheduleConfig) -> float:
    return min(cfg.t0 + cfg.ts * h, cfg.tmax)
