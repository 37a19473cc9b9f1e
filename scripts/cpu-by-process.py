#!/usr/bin/env python3
"""CPU per item by process kind, for scripts/bench-vs-celery.

    cpu-by-process.py sample OUT DATABASE SQL    until SIGTERM: once a second, every
                                                 process's CPU and SQL's count (a
                                                 number of finished items), one JSON
                                                 line each, to OUT
    cpu-by-process.py analyse [--from-start] OUT N [LABEL...]
                                                 one JSON line per burst of N items in OUT

A burst starts the second before the count first rose by a fifth of its
peak rate and ends at the first second by which N × 0.98 more items had
finished (the slow last ones left out); a count that falls (a table
emptied between configurations) starts a new segment, searched alike.
`--from-start`: the burst starts at the first sample (the sampler ran
only around it; its first seconds, while the items are being submitted,
may finish few).
Over each burst's seconds, the CPU of every process
(`/proc/<pid>/stat`: utime + stime, and cutime + cstime for the children
it reaped, such as each command's `sh`) is summed by kind and divided by
the items finished in them. Processes that started and ended inside the
window count through the process that reaped them. The sampler itself and
its `psql` are left out of the kinds (not of the machine's busy time, ~0.1
ms an item); the PostgreSQL backend each `psql` starts is not (a few µs an
item). LABELs name the bursts in order.
"""
import json
import os
import signal
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")
RABBITMQ = ("beam.smp", "erl_child_setup", "epmd", "inet_gethost")


def kind(pid, comm, ppid):
    if pid == os.getpid():
        return "sampler"
    if ppid == 2 or comm.startswith(("kworker", "ksoftirqd", "rcu_")):
        return "kernel threads"
    if comm == "postgres":
        return "postgres"
    if comm in RABBITMQ:
        return "rabbitmq"
    if comm.startswith("python") or comm == "celery":
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            cmdline = b""
        if b"bench.py" in cmdline:
            return "celery client (bench.py)"
        if b"celery" in cmdline:
            return "celery worker (with its commands)"
        return "python, other"
    if comm == "init":
        return "rdev sandbox init (with its commands)"
    if comm == "rdev":
        return "rdev client (bench)"
    if comm in ("rdev-api", "rdev-worker", "rdev-dispatcher"):
        return comm
    return "other"


def processes():
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        f = stat[stat.rindex(")") + 2 :].split()
        ppid = int(f[1])
        ut, st, cut, cst = (int(x) for x in f[11:15])
        out[f"{p}:{f[19]}"] = [kind(int(p), comm, ppid), ut + st, cut + cst]
    return out


def busy():
    f = open("/proc/stat").readline().split()
    # user nice system, irq softirq; steal apart
    return sum(int(x) for x in f[1:4]) + int(f[6]) + int(f[7]), int(f[8])


def sample(out, database, sql):
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    psql = ["psql", "-XtA", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-c", sql]
    with open(out, "w") as fh:
        while running:
            t = time.time()
            got = subprocess.run(psql, capture_output=True, text=True).stdout.strip()
            b, steal = busy()
            line = {"t": t, "count": int(got) if got.isdigit() else None, "busy": b,
                    "steal": steal, "procs": processes()}
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            time.sleep(max(0.0, 1 - (time.time() - t)))


def bursts(rows, n, from_start):
    """(first, last) sample of each burst of `n` items."""
    rows = [r for r in rows if r["count"] is not None]
    segments, start = [], 0
    for i in range(1, len(rows)):
        if rows[i]["count"] < rows[i - 1]["count"]:
            segments.append(rows[start:i])
            start = i
    segments.append(rows[start:])
    found = []
    for seg in segments:
        rates = [seg[i + 1]["count"] - seg[i]["count"] for i in range(len(seg) - 1)]
        if not rates or max(rates) <= 0:
            continue
        first = 0 if from_start else next(i for i, r in enumerate(rates) if r >= 0.2 * max(rates))
        want = seg[first]["count"] + 0.98 * n
        last = next((j for j in range(first + 1, len(seg)) if seg[j]["count"] >= want), None)
        if last is not None:
            found.append((seg[first], seg[last]))
    return found


def analyse(path, n, labels, from_start=False):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    for i, (a, b) in enumerate(bursts(rows, n, from_start)):
        items = b["count"] - a["count"]
        seconds = b["t"] - a["t"]
        per = {}
        for key, (k, own, reaped) in b["procs"].items():
            own0, reaped0 = a["procs"].get(key, [k, 0, 0])[1:]
            per[k] = per.get(k, 0) + (own - own0) + (reaped - reaped0)
        per.pop("sampler", None)
        ms = {k: round(v * 1000 / HZ / items, 3) for k, v in per.items()}
        ms = {k: v for k, v in ms.items() if v >= 0.005}
        print(json.dumps({
            "label": labels[i] if i < len(labels) else f"burst {i + 1}",
            "items": items,
            "seconds": round(seconds, 1),
            "rate": round(items / seconds, 1),
            "machine_busy_ms": round((b["busy"] - a["busy"]) * 1000 / HZ / items, 3),
            "steal_ms": round((b["steal"] - a["steal"]) * 1000 / HZ / items, 3),
            "by_kind_ms": dict(sorted(ms.items(), key=lambda kv: -kv[1])),
        }))


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "sample":
        sample(*sys.argv[2:5])
    elif len(sys.argv) >= 4 and sys.argv[1] == "analyse":
        args = sys.argv[2:]
        from_start = args[0] == "--from-start"
        args = args[1:] if from_start else args
        analyse(args[0], int(args[1]), args[2:], from_start)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
