"""Reading a report: the sweep's best configurations and one ranked line per configuration."""

from __future__ import annotations

import re
from typing import Sequence

from .records import BenchConfig, Report, Row, bench_name


def sweep_summary(rows: Sequence[Row], default: BenchConfig, *, n_prompt: int, n_gen: int,
                  n_depth: int = 0) -> dict:
    """Per model:quant, the fastest configuration for pp and for tg, and how close the defaults come.

    tg does not depend on the batch size, so a configuration's tg is the one measured
    at its thread count and flash-attention setting.
    """
    out = {}
    for key in dict.fromkeys(f"{r.model}:{r.quant}" for r in rows):
        mine = [r for r in rows if f"{r.model}:{r.quant}" == key]
        pp = {r.config: r.mean_tps for r in mine if r.test == bench_name("pp", n_prompt, n_depth)}
        tg_by = {(r.n_threads, r.flash_attn): r.mean_tps for r in mine if r.test == bench_name("tg", n_gen, n_depth)}
        if not pp or not tg_by:
            continue

        def entry(c: BenchConfig) -> dict:
            return {"n_threads": c.n_threads, "flash_attn": c.flash_attn, "n_batch": c.n_batch,
                    "pp_tps": pp.get(c), "tg_tps": tg_by.get((c.n_threads, c.flash_attn))}

        best_pp = max(pp, key=pp.get)
        best_tg_key = max(tg_by, key=tg_by.get)
        best_tg = BenchConfig(best_tg_key[0], best_tg_key[1], default.n_batch)
        # Recommended: tg's threads and flash attention, then the best batch size for those.
        same = {c: v for c, v in pp.items() if (c.n_threads, c.flash_attn) == best_tg_key}
        rec = max(same, key=same.get) if same else best_tg
        d = entry(default)
        out[key] = {
            "default": d, "best_pp": entry(best_pp), "best_tg": entry(best_tg),
            "default_vs_best": {"pp": _ratio(d["pp_tps"], pp[best_pp]), "tg": _ratio(d["tg_tps"], tg_by[best_tg_key])},
            "recommended": {"n_threads": rec.n_threads, "flash_attn": rec.flash_attn, "n_batch": rec.n_batch},
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


def summarize(report: Report | dict) -> list[dict]:
    """One line per model x quant x configuration, ranked by generation speed (tg),
    then prompt speed: what the tables show. ``roofline`` is tg as a fraction of
    the machine's bandwidth / model bytes, when the bandwidth is known."""
    data = report.to_dict() if isinstance(report, Report) else report
    bandwidth = (data["header"].get("machine") or {}).get("bandwidth_gbs")
    lines: dict[tuple, dict] = {}
    for r in data["results"]:
        key = (r["model"], r["quant"], r["n_threads"], r["flash_attn"], r["n_batch"])
        line = lines.setdefault(key, {
            "model": r["model"], "quant": r["quant"], "file_size": r["file_size"], "n_threads": r["n_threads"],
            "flash_attn": r["flash_attn"], "n_batch": r["n_batch"], "pp_tps": None, "pp_std": None,
            "tg_tps": None, "tg_std": None, "e2e_tps": None, "e2e_std": None, "ttft_s": None, "load_s": None,
            "peak_rss": r.get("peak_rss"), "roofline": None})
        kind = re.match(r"[a-z]+", r["test"]).group(0)  # pp512@d1024 -> pp
        if kind in ("pp", "tg", "e2e"):
            line[f"{kind}_tps"], line[f"{kind}_std"] = r["mean_tps"], r["std_tps"]
        else:
            line[f"{kind}_s"] = r["mean_s"]
    out = list(lines.values())
    for line in out:
        if bandwidth and line["tg_tps"] and line["file_size"]:
            line["roofline"] = round(line["tg_tps"] * line["file_size"] / (bandwidth * 1e9), 3)
    out.sort(key=lambda x: (-(x["tg_tps"] or 0), -(x["pp_tps"] or 0)))
    for i, line in enumerate(out, 1):
        line["rank"] = i
    return out
