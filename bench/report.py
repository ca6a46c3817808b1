"""The results as a table (with notes on failures) and as JSON."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TextIO

from .config import Config
from .machine import machine_line
from .measure import Cell, Results, ratio
from .modes import Mode
from .workloads import Workload

_LARGER = {"ns": ("µs", 1e3), "µs": ("ms", 1e3), "ms": ("s", 1e3)}


def fmt_num(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_value(v: float, unit: str) -> str:
    """'16.7 µs' rather than '16696 ns'."""
    while unit in _LARGER and v >= 10000:
        unit, v = _LARGER[unit][0], v / _LARGER[unit][1]
    return f"{fmt_num(v)} {unit}"


def fmt_ratio(r: float) -> str:
    return f"{r:.0f}×" if r >= 10 else f"{r:.2f}×"


def _row(w: Workload, modes: list[Mode], cells: dict[str, Cell], notes: list[str]) -> list[str]:
    """One workload's line of the table; failures are numbered and explained in `notes`."""
    base = cells[modes[0].name].median
    row = [f"{w.key:4} {w.title}"]
    for m in modes:
        c = cells[m.name]
        if c.error:
            notes.append(f"{w.key} {m.name}: {c.error}")
            row.append(f"failed [{len(notes)}]")
            continue
        v = c.median
        if v is None:
            row.append("-")
            continue
        text = fmt_value(v, w.unit)
        r = ratio(w, v, base)
        if m is not modes[0] and r is not None:
            text += f" ({fmt_ratio(r)})"
        row.append(text)
    return row


def table(wls: list[Workload], modes: list[Mode], results: Results) -> tuple[str, list[str]]:
    notes: list[str] = []
    head = ["workload"] + [m.name for m in modes]
    rows = [_row(w, modes, results[w.key], notes) for w in wls]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(wd) for h, wd in zip(head, widths, strict=True)).rstrip(),
             "  ".join("-" * wd for wd in widths)]
    for r in rows:
        cols = [r[0].ljust(widths[0])] + [c.rjust(wd) for c, wd in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cols))
    return "\n".join(lines), notes


@dataclass
class Report:
    """Everything one benchmark run found, to print."""
    cfg: Config
    wls: list[Workload]
    modes: list[Mode]
    results: Results
    unavailable: dict[str, str]     # mode name -> why it did not run
    calibration: list[float]        # native pipe round trips over the run, µs
    info: dict[str, object]         # machine_info()
    elapsed: float

    def write_text(self, out: TextIO) -> None:
        cfg = self.cfg
        text, notes = table(self.wls, self.modes, self.results)
        print(f"qrun benchmark: median of {cfg.runs} run{'s' if cfg.runs != 1 else ''} after a warm-up"
              f"{' (--quick)' if cfg.quick else ''}; (N×) = slowdown against native", file=out)
        print(text, file=out)
        for i, n in enumerate(notes, 1):
            print(f"[{i}] {n}", file=out)
        for name, why in self.unavailable.items():
            print(f"not run: {name}: {why}", file=out)
        print("modes: " + "; ".join(f"{m.name} = {m.what}" for m in self.modes[1:]), file=out)
        cal = self.calibration
        if cal:
            print(f"noise: a native pipe round trip took {statistics.median(cal):.1f} µs "
                  f"(min {min(cal):.1f}, max {max(cal):.1f}) over the run; every "
                  "trapped call pays at least one such switch", file=out)
        print(machine_line(self.info) + f"; total {self.elapsed:.0f} s"
              + (f"; taskset -c {cfg.taskset}" if cfg.taskset else ""), file=out)

    def machine(self) -> dict[str, object]:
        info = dict(self.info)
        if self.calibration:
            cal = self.calibration
            info["pipe_round_trip_us"] = {"median": statistics.median(cal), "min": min(cal), "max": max(cal)}
        return info

    def _cell_doc(self, w: Workload, m: Mode) -> dict[str, object]:
        cell = self.results[w.key][m.name]
        return {
            "median": cell.median,
            "ratio_to_native": ratio(w, cell.median, self.results[w.key]["native"].median),
            "runs": cell.values,
            "wall_s_median": statistics.median(cell.walls) if cell.walls else None,
            "error": cell.error,
        }

    def json_doc(self) -> dict[str, object]:
        cfg = self.cfg
        return {
            "config": {"quick": cfg.quick, "runs": cfg.runs, "loop_budget_ms": cfg.budget_ms,
                       "big_mib": cfg.big_mib, "make_files": cfg.make_files, "taskset": cfg.taskset},
            "machine": self.machine(),
            "elapsed_s": round(self.elapsed, 1),
            "modes": {m.name: {"available": True, "what": m.what} for m in self.modes}
            | {n: {"available": False, "reason": why} for n, why in self.unavailable.items()},
            "workloads": {
                w.key: {"title": w.title, "unit": w.unit, "higher_is_better": w.higher_is_better,
                        "results": {m.name: self._cell_doc(w, m) for m in self.modes}}
                for w in self.wls
            },
        }
