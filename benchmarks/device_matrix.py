"""The README's device matrix: the planner's pick for each named device profile × registry model.

    .venv/bin/python benchmarks/device_matrix.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slmrun import hardware, planner  # noqa: E402
from slmrun.errors import InsufficientMemoryError  # noqa: E402
from slmrun.registry import load_registry  # noqa: E402

DEVICES = ["rpi4-2gb", "rpi4-4gb", "rpi4-8gb", "rpi5-8gb", "laptop-8gb", "laptop-16gb", "container-1gb"]


def main() -> None:
    entries = sorted(load_registry().models.values(), key=lambda e: e.n_params)
    print("| device (budget) | " + " | ".join(e.name for e in entries) + " |")
    print("|---" * (len(entries) + 1) + "|")
    for d in DEVICES:
        hw, cells = hardware.profile(d), []
        for e in entries:
            try:
                p = planner.plan(e, hw)
                cells.append(f"{p.quant} {planner.format_bytes(p.estimated_bytes)}, ~{p.estimated_tps:.0f} t/s"
                             + ("" if p.estimated_tps >= p.min_speed else " (slow)"))
            except InsufficientMemoryError:
                cells.append("does not fit")
        print(f"| {d} ({planner.format_bytes(planner.budget_bytes(hw))}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
