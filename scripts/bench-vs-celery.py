#!/usr/bin/env python3
"""Summarises scripts/bench-vs-celery's results.jsonl: every round, the
median, and rdev's ratio to Celery's best configuration, beside the target
of issue 17. Reads one JSON object per line:
{"system": "rdev" | "rdev-nosandbox" | "celery", "round": N, "label": ..., "report": {...}}
where an rdev report is `rdev --json bench ...` output and a Celery report is
one line of ../shared/peers/celery/bench.py (one per concurrency).
"""
import json
import statistics
import sys


def load(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    rounds = sorted({r["round"] for r in rows})
    return rows, rounds


def rdev_fig(rows, system, label, name, rnd):
    for r in rows:
        if r["system"] == system and r["label"] == label and r["round"] == rnd:
            return r["report"].get("figures", {}).get(name)
    return None


def celery_best(rows, key, rnd, better):
    """Celery's best configuration (-c 2 or -c 8) of a round."""
    vals = [
        r["report"].get(key)
        for r in rows
        if r["system"] == "celery" and r["round"] == rnd and r["report"].get(key) is not None
    ]
    return better(vals) if vals else None


def fmt(v, unit=""):
    if v is None:
        return "-"
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def main():
    rows, rounds = load(sys.argv[1])
    # (title, unit, rdev source, celery source or None, higher is better, target)
    measures = [
        ("e2e throughput, `true` × N (client-observed)", " cmd/s",
         ("rdev", "e2e", "throughput_client"), ("e2e_throughput", max), True, "≥ 2.5× Celery"),
        ("e2e throughput, server timestamps", " cmd/s",
         ("rdev", "e2e", "throughput_server"), ("e2e_throughput_worker", max), True, "≥ 2.5× Celery"),
        ("e2e throughput, sandbox off (client-observed)", " cmd/s",
         ("rdev-nosandbox", "e2e", "throughput_client"), ("e2e_throughput", max), True, "(reference)"),
        ("one at a time, client-observed p50 (`?wait=`)", " ms",
         ("rdev", "seq_wait", "client_observed.p50"), ("seq_lat_p50_ms", min), False, "≤ 0.5× Celery"),
        ("one at a time, client-observed p50 (polling every 2 ms)", " ms",
         ("rdev", "seq", "client_observed.p50"), ("seq_lat_p50_ms", min), False, "(reference)"),
        ("one at a time, sandbox off, p50", " ms",
         ("rdev-nosandbox", "seq", "client_observed.p50"), ("seq_lat_p50_ms", min), False, "(reference)"),
        ("enqueue, 64 clients", " req/s",
         ("rdev", "enqueue", "throughput"), ("submit_rate", max), True, "≥ 5,000 req/s"),
        ("enqueue, 64 clients, p99", " ms",
         ("rdev", "enqueue", "latency.p99"), None, False, "≤ 25 ms"),
        ("webhooks, live (bounded by command pace)", " /s",
         ("rdev", "webhooks", "deliveries_per_s"), None, True, "(reference)"),
        ("webhook backlog drain, busiest second", " /s",
         ("rdev", "webhook_backlog", "deliveries_peak_1s"), None, True, "≥ 3,000/s"),
        ("one event idle, event → delivery p50", " ms",
         ("rdev", "webhook_idle", "event_to_delivery.p50"), None, False, "≤ 5 ms"),
        ("events of 100 commands enqueued in a row, p50", " ms",
         ("rdev", "webhook_trickle", "event_to_delivery.p50"), None, False, "(reference)"),
        ("idle SSE, API RSS idle − before", " MiB",
         ("rdev", "sse", "api_rss_idle"), None, False, "≤ 8 KiB each"),
        ("idle SSE, API RSS peak (output ends) − before", " MiB",
         ("rdev", "sse", "api_rss_peak"), None, False, "(reference)"),
    ]
    print(f"{'measure':48} {'round':>5} {'rdev':>14} {'Celery best':>14} {'ratio':>7}  target")
    for title, unit, (system, label, name), celery, higher, target in measures:
        rv, cv = [], []
        for rnd in rounds:
            v = rdev_fig(rows, system, label, name, rnd)
            if name in ("api_rss_idle", "api_rss_peak") and v is not None:
                before = rdev_fig(rows, system, label, "api_rss_before", rnd)
                v = v - before if before is not None else None
            c = celery_best(rows, celery[0], rnd, celery[1]) if celery else None
            rv.append(v)
            cv.append(c)
            ratio = (v / c if higher else c / v) if v and c else None
            print(f"{title:48} {rnd:>5} {fmt(v, unit):>14} {fmt(c, unit):>14} {fmt(ratio, '×'):>7}")
        mr, mc = median(rv), median(cv)
        ratio = (mr / mc if higher else mc / mr) if mr and mc else None
        print(f"{'  median':48} {'':>5} {fmt(mr, unit):>14} {fmt(mc, unit):>14} {fmt(ratio, '×'):>7}  {target}")
    watchers = [
        r["report"].get("params", {}).get("watchers")
        for r in rows
        if r["system"] == "rdev" and r["label"] == "sse"
    ]
    if watchers and watchers[0]:
        for what, fig in (("idle", "api_rss_idle"), ("at the output's end", "api_rss_peak")):
            per = median(
                [
                    v - b
                    for rnd in rounds
                    if (v := rdev_fig(rows, "rdev", "sse", fig, rnd)) is not None
                    and (b := rdev_fig(rows, "rdev", "sse", "api_rss_before", rnd)) is not None
                ]
            )
            print(f"SSE {what}: {fmt(per * 1024 / watchers[0] if per is not None else None, ' KiB')} of API RSS "
                  f"per connection at {watchers[0]:,} connections (target, idle: ≤ 8 KiB)")
    print("(ratios: > 1× means rdev is ahead; for latencies Celery ÷ rdev)")
    cpu_table(rows, rounds)


def cpu_table(rows, rounds):
    """CPU per item by process kind during the e2e bursts (medians over the
    rounds), from scripts/cpu-by-process.py."""
    columns = [("rdev", "rdev", "e2e_cpu", "rdev"), ("Celery -c 2", "celery", "cpu", "c2"),
               ("Celery -c 8", "celery", "cpu", "c8")]
    found = {}
    for title, system, label, burst in columns:
        reports = [r["report"] for r in rows if r["system"] == system and r["label"] == label
                   and r["report"].get("label") == burst]
        if reports:
            found[title] = reports
    if not found:
        return
    kinds = []
    for reports in found.values():
        for rep in reports:
            kinds += [k for k in rep["by_kind_ms"] if k not in kinds]
    print(f"\nCPU per item during the e2e burst, ms (median of {len(rounds)} rounds; "
          "scripts/cpu-by-process.py)")
    print(f"{'':40}" + "".join(f"{t:>14}" for t in found))

    def row(name, pick):
        cells = (fmt(median([pick(r) for r in reps])) for reps in found.values())
        print(f"{name:40}" + "".join(f"{c:>14}" for c in cells))

    row("machine busy", lambda rep: rep["machine_busy_ms"])
    row("items/s in the window", lambda rep: rep["rate"])
    for k in kinds:
        row(k, lambda rep, k=k: rep["by_kind_ms"].get(k))
    busy = {t: median([r["machine_busy_ms"] for r in reps]) for t, reps in found.items()}
    celery = [v for t, v in busy.items() if t.startswith("Celery") and v]
    if busy.get("rdev") and celery:
        print(f"Celery's least CPU per task ÷ rdev's per command: {fmt(min(celery) / busy['rdev'], '×')} "
              f"(2.5× would need {fmt(min(celery) / 2.5, ' ms')} a command)")


if __name__ == "__main__":
    main()
