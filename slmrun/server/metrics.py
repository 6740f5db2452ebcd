"""/metrics in Prometheus' text format (version 0.0.4).

Written out rather than through prometheus_client: a handful of counters, gauges read
from the engines at scrape time, and one histogram do not need its process-wide
registry. The tests parse this output with prometheus_client's own parser.
"""

from __future__ import annotations

import threading
from collections import defaultdict

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.total += 1
        self.sum += value


def _labels(**labels) -> str:
    if not labels:
        return ""
    def esc(v) -> str:
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def _num(v: float) -> str:
    return "+Inf" if v == float("inf") else repr(float(v)) if isinstance(v, float) else str(v)


class Metrics:
    """Totals that outlive any one loaded model; updated from the event loop and from the
    engines' threads (a Response's done-callback), hence the lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = defaultdict(int)  # (path, status) -> count
        self.prompt_tokens = defaultdict(int)  # model -> tokens
        self.generated_tokens = defaultdict(int)
        self.generations = defaultdict(int)  # (model, finish_reason) -> count
        self.ttft = defaultdict(lambda: Histogram(TTFT_BUCKETS))  # model -> histogram
        self.embedded_inputs = defaultdict(int)  # model -> inputs embedded
        self.request_seconds = Histogram(DURATION_BUCKETS)

    def request_done(self, path: str, status: int, seconds: float) -> None:
        route = path if path in KNOWN_PATHS else "other"
        with self._lock:
            self.requests[(route, status)] += 1
            self.request_seconds.observe(seconds)

    def generation_done(self, model: str, response) -> None:
        """A Response's done-callback: tokens and time to first token."""
        try:
            stats, reason = response.stats, response.finish_reason
        except Exception:  # it failed: the error was the client's answer; nothing to count
            reason, stats = "error", None
        with self._lock:
            self.generations[(model, reason)] += 1
            if stats is not None:
                self.prompt_tokens[model] += stats.prompt_tokens
                self.generated_tokens[model] += stats.generated_tokens
                if stats.generated_tokens:
                    self.ttft[model].observe(stats.ttft_s)

    def embeddings_done(self, model: str, inputs: int, tokens: int) -> None:
        with self._lock:
            self.embedded_inputs[model] += inputs
            self.prompt_tokens[model] += tokens

    def render(self, loaded: list, counters: dict, rss: int | None) -> str:
        """``loaded``: the manager's Loaded entries (their engines give the gauges)."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, samples):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for suffix, labels, value in samples:
                out.append(f"{name}{suffix}{_labels(**labels)} {_num(value)}")

        with self._lock:
            family("slmrun_http_requests_total", "counter", "HTTP requests answered, by path and status.",
                   [("", {"path": p, "status": s}, n) for (p, s), n in sorted(self.requests.items())])
            family("slmrun_http_request_duration_seconds", "histogram", "Time to answer an HTTP request in full.",
                   _hist_samples(self.request_seconds, {}))
            family("slmrun_generations_total", "counter", "Generations ended, by model and finish reason.",
                   [("", {"model": m, "finish_reason": r}, n) for (m, r), n in sorted(self.generations.items())])
            family("slmrun_prompt_tokens_total", "counter", "Prompt tokens received (cached ones included).",
                   [("", {"model": m}, n) for m, n in sorted(self.prompt_tokens.items())])
            family("slmrun_embedded_inputs_total", "counter", "Inputs embedded (texts or token lists).",
                   [("", {"model": m}, n) for m, n in sorted(self.embedded_inputs.items())])
            family("slmrun_generated_tokens_total", "counter", "Tokens generated.",
                   [("", {"model": m}, n) for m, n in sorted(self.generated_tokens.items())])
            ttft = []
            for m, h in sorted(self.ttft.items()):
                ttft += _hist_samples(h, {"model": m})
            family("slmrun_time_to_first_token_seconds", "histogram",
                   "From a request's arrival to its first piece of text (queueing included).", ttft)
        status = [(m.key, m.model.status()) for m in loaded if not m.model.closed]
        family("slmrun_models_loaded", "gauge", "Models loaded now.", [("", {}, len(status))])
        family("slmrun_slots", "gauge", "Sequences a loaded model decodes together.",
               [("", {"model": k}, s["n_parallel"]) for k, s in status])
        family("slmrun_slots_busy", "gauge", "Slots generating now.",
               [("", {"model": k}, s["slots_busy"]) for k, s in status])
        family("slmrun_queue_depth", "gauge", "Requests waiting for a slot.",
               [("", {"model": k}, s["queue_depth"]) for k, s in status])
        family("slmrun_model_loads_total", "counter", "Models loaded since the server started.",
               [("", {}, counters.get("loads", 0))])
        family("slmrun_model_unloads_total", "counter", "Models unloaded since the server started.",
               [("", {}, counters.get("unloads", 0))])
        if rss is not None:
            family("process_resident_memory_bytes", "gauge", "Resident memory of the server process.",
                   [("", {}, rss)])
        return "\n".join(out) + "\n"


def _hist_samples(h: Histogram, labels: dict) -> list:
    samples = [("_bucket", {**labels, "le": _num(edge)}, n) for edge, n in zip(h.buckets, h.counts)]
    samples.append(("_bucket", {**labels, "le": "+Inf"}, h.total))
    samples.append(("_sum", labels, h.sum))
    samples.append(("_count", labels, h.total))
    return samples


# Paths counted by name; anything else is "other", so a scanner cannot grow the label set.
KNOWN_PATHS = frozenset({
    "/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
    "/api/chat", "/api/generate", "/api/tags", "/api/show", "/api/ps", "/api/version", "/api/pull", "/api/delete",
    "/v1/embeddings", "/api/embed", "/api/embeddings",
})
