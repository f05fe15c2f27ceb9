"""The server's figures (``/health``) as Prometheus text (``/metrics``)."""

from __future__ import annotations


def prometheus(h: dict) -> str:
    """``/health``'s figures in the Prometheus text format."""
    b = h["batch"]
    lines = []

    def metric(name: str, kind: str, help_: str, value, labels: str = "") -> None:
        if not any(line.startswith(f"# TYPE pkt_{name} ") for line in lines):
            lines.append(f"# HELP pkt_{name} {help_}")
            lines.append(f"# TYPE pkt_{name} {kind}")
        lines.append(f"pkt_{name}{labels} {'NaN' if value is None else value}")

    metric("batch_rows", "gauge", "Requests decoding in the batch.", b["rows"])
    metric("batch_max_rows", "gauge", "Rows the batch may hold (serve.max_batch).", b["max_rows"])
    metric("waiting_requests", "gauge", "Requests accepted and not yet decoding.", h["waiting"])
    metric("output_tokens_per_second", "gauge", "Output tokens per second, last 10 s.",
           b["tokens_per_s"])
    metric("decode_steps_total", "counter", "Forward passes of the decoding batch.",
           b["decode_steps"])
    for key, name in (("requests", "requests_total"), ("completed", "completed_total"),
                      ("cancelled", "cancelled_total"), ("errors", "errors_total"),
                      ("rejected", "rejected_total"),
                      ("completion_tokens", "completion_tokens_total")):
        metric(name, "counter", f"Requests: {key.replace('_', ' ')}.", h[key])
    for fig, name in (("latency_s", "request_latency_seconds"),
                      ("ttft_s", "time_to_first_token_seconds")):
        for q in ("p50", "p95"):
            metric(name, "gauge", f"{name.replace('_', ' ')} over recent requests.",
                   b[fig][q], f'{{quantile="{0.5 if q == "p50" else 0.95}"}}')
    pc = b.get("prompt_cache")
    if pc is not None:
        metric("prompt_cache_hits_total", "counter",
               "Prefills that started from a cached prompt prefix.", pc["hits"])
        metric("prompt_cache_reused_tokens_total", "counter",
               "Prompt tokens taken from the prompt cache instead of computed.",
               pc["reused_tokens"])
    metric("identifying", "gauge", "1 while a trait is being identified.",
           int(h["identifying"] is not None))
    return "\n".join(lines) + "\n"
