#!/usr/bin/env python3
"""Runs swift-rabbitmq's benchmarks and prints the report (called by scripts/bench.sh).

Each run is one process of the C baseline (`rabbitmq-bench-c`) or of the Swift `rabbitmq-bench`, both with
the same interface:

    BIN publish --url URL --queue Q --count N --size BYTES --window W   -> last line `pub msgs=N secs=S rate=R`
    BIN consume --url URL --queue Q --count N --prefetch P              -> last line `con msgs=N secs=S rate=R`
    BIN latency --url URL --queue Q --rate R --count N (Swift only)     -> last line `lat msgs=N p50us=X p99us=Y`
    BIN multi --url URL --queue Q --count N --publishers P --consumers C (Swift only; C runs P + C processes)
                                                                        -> `mul pub_msgs=… pub_secs=… con_msgs=… con_secs=…`

Besides the `small` and `large` workloads (C against Swift), the report compares (bench_workloads.py):
`tasks` (N tasks calling client.publish against the windowed loop), `actor` (the loops on the main actor against
the same loops in a task), `tls` (C against Swift over amqps) and `multi` (P publishing and C consuming
connections at once, against as many C processes).
    BIN connect-failures --count N (Swift only, no broker)              -> last line `cf n=N refused_p50ms=…`

The rate is the program's own (timed section only); CPU (user + system) and max RSS are the process's
own, from wait4(2). Every round runs publish A, publish B, consume A, consume B with one queue per
implementation, and A alternates between C and Swift from round to round. Medians are reported.

Lines starting with `RESULT` (key=value fields) are meant for scripts; everything else is for people.
"""

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_workloads  # noqa: E402  (next to this file)

RESULT_RE = {
    "publish": re.compile(r"^pub msgs=(\d+) secs=([0-9.]+) rate=([0-9.]+)\s*$"),
    "consume": re.compile(r"^con msgs=(\d+) secs=([0-9.]+) rate=([0-9.]+)\s*$"),
    "multi": re.compile(r"^mul pub_msgs=(\d+) pub_secs=([0-9.]+) con_msgs=(\d+) con_secs=([0-9.]+)\s*$"),
    "latency": re.compile(r"^lat msgs=(\d+) p50us=([0-9.]+) p99us=([0-9.]+)\s*$"),
    "connect-failures": re.compile(r"^cf n=(\d+) refused_p50ms=([0-9.]+) refused_maxms=([0-9.]+) "
                                   r"silent_timeoutms=(\d+) silent_overshoot_p50ms=(-?[0-9.]+) "
                                   r"silent_overshoot_maxms=(-?[0-9.]+)\s*$"),
}


def progress(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


def redact(url):
    try:
        u = urllib.parse.urlsplit(url)
        if u.password:
            netloc = f"{u.username}:***@{u.hostname}" + (f":{u.port}" if u.port else "")
            return urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
    except ValueError:
        pass
    return url


GNU_TIME = "/usr/bin/time"


def run(argv, timeout):
    """Runs argv; returns a dict with rc, stdout, stderr tail, cpu seconds, max RSS (KiB), wall seconds.

    CPU comes from wait4(2) (microseconds). Max RSS cannot: a process forked from this Python keeps
    Python's high-water RSS across exec (Linux records the old mm's peak at exec), so the program runs
    under GNU time, a small C process, whose %M is the program's own peak (>= time's ~2 MB).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="bench-time-") as tf:
        cmd = list(argv)
        if os.access(GNU_TIME, os.X_OK):
            cmd = [GNU_TIME, "-q", "-f", "%M", "-o", tf.name] + cmd
        t0 = time.monotonic()
        try:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            return {"rc": -1, "stdout": "", "stderr": str(e), "cpu": 0.0, "rss": 0, "wall": 0.0,
                    "timed_out": False}
        timed_out = []

        def kill():
            timed_out.append(True)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            while True:
                try:
                    _, status, ru = os.wait4(p.pid, 0)
                    break
                except InterruptedError:
                    continue
        except BaseException:  # Ctrl-C: the run is in its own session, so it would outlive us
            kill()
            raise
        finally:
            timer.cancel()
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        rss = None
        if cmd[0] == GNU_TIME:
            tf.seek(0)
            m = re.search(rb"(\d+)\s*$", tf.read())
            rss = int(m.group(1)) if m else None
    rc = p.returncode
    if rc > 128 and cmd[0] == GNU_TIME and "Command terminated by signal" in stderr:
        rc = -(rc - 128)
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip() and not ln.startswith("Command ")]
    return {
        "rc": rc,
        "stdout": stdout,
        "stderr": " | ".join(lines[-3:]),
        "cpu": ru.ru_utime + ru.ru_stime,  # the program and GNU time (~1 ms)
        "rss": rss,  # KiB; None without GNU time
        "wall": wall,
        "timed_out": bool(timed_out),
    }


def last_line(stdout):
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class Bench:
    def __init__(self, args):
        self.args = args
        self.impls = {"c": args.c_bin}
        if args.swift_bin:
            self.impls["swift"] = args.swift_bin
        self.records = []
        self.raw = open(args.raw, "w") if args.raw else None

    def record(self, rec):
        self.records.append(rec)
        if self.raw:
            self.raw.write(json.dumps(rec) + "\n")
            self.raw.flush()

    def one(self, workload, op, impl, argv, count, rnd):
        res = run(argv, self.args.timeout)
        rec = {"workload": workload, "op": op, "impl": impl, "round": rnd, "argv": argv[1:],
               "rc": res["rc"], "cpu_s": round(res["cpu"], 6), "rss_kib": res["rss"],
               "wall_s": round(res["wall"], 3), "ok": False}
        line = last_line(res["stdout"])
        m = RESULT_RE[op].match(line)
        if res["rc"] == 0 and m:
            rec["ok"] = True
            rec["msgs"] = int(m.group(1))
            if op == "multi":
                pub_msgs, pub_secs, con_msgs, con_secs = (float(m.group(i)) for i in range(1, 5))
                rec["msgs"] = int(pub_msgs + con_msgs)
                rec["pub_rate"] = pub_msgs / pub_secs if pub_secs else 0.0
                rec["con_rate"] = con_msgs / con_secs if con_secs else 0.0
                rec["cpu_us_per_msg"] = res["cpu"] * 1e6 / max(count, 1)
            elif op == "latency":
                rec["p50us"] = float(m.group(2))
                rec["p99us"] = float(m.group(3))
            elif op == "connect-failures":
                for i, key in enumerate(["refused_p50ms", "refused_maxms", "silent_timeoutms",
                                         "silent_overshoot_p50ms", "silent_overshoot_maxms"], start=2):
                    rec[key] = float(m.group(i))
            else:
                rec["secs"] = float(m.group(2))
                rec["rate"] = float(m.group(3))
                rec["cpu_us_per_msg"] = res["cpu"] * 1e6 / max(count, 1)
                if rec["msgs"] != count:
                    rec["ok"] = False
                    rec["error"] = f"reported msgs={rec['msgs']}, expected {count}"
        else:
            why = "timed out" if res["timed_out"] else f"exit status {res['rc']}"
            if res["rc"] == 0 and not m:
                why = f"no result line (last line: {line[:120]!r})"
            rec["error"] = why + (f"; stderr: {res['stderr']}" if res["stderr"] else "")
        self.record(rec)
        if rec["ok"]:
            if op == "multi":
                detail = (f"publish {rec['pub_rate']:.0f}/s consume {rec['con_rate']:.0f}/s "
                          f"cpu={rec['cpu_us_per_msg']:.2f}us/msg")
            elif op == "latency":
                detail = f"p50={rec['p50us']:.0f}us p99={rec['p99us']:.0f}us"
            elif op == "connect-failures":
                detail = (f"refused p50={rec['refused_p50ms']:.1f}ms max={rec['refused_maxms']:.1f}ms, "
                          f"silent overshoot p50={rec['silent_overshoot_p50ms']:.1f}ms "
                          f"max={rec['silent_overshoot_maxms']:.1f}ms")
            else:
                detail = (f"rate={rec['rate']:.0f}/s cpu={rec['cpu_us_per_msg']:.2f}us/msg "
                          f"rss={rec['rss_kib']}KiB")
            progress(f"  {workload} {op:8s} {impl:5s} round {rnd}: {detail}")
        else:
            progress(f"  {workload} {op:8s} {impl:5s} round {rnd}: FAILED: {rec['error']}")
        return rec

    def workload(self, name, rounds, count, size, window, prefetch):
        if rounds <= 0 or count <= 0:
            return
        progress(f"workload {name}: {count} x {size} B, window {window}, prefetch {prefetch}, {rounds} rounds")
        url = self.args.url
        impls = list(self.impls)
        for rnd in range(1, rounds + 1):
            order = impls if rnd % 2 == 1 else impls[::-1]
            published = {}
            for impl in order:
                q = f"bench-{name}-{impl}"
                argv = [self.impls[impl], "publish", "--url", url, "--queue", q, "--count", str(count),
                        "--size", str(size), "--window", str(window)]
                published[impl] = self.one(name, "publish", impl, argv, count, rnd)["ok"]
            for impl in order:
                if not published[impl]:
                    progress(f"  {name} consume  {impl:5s} round {rnd}: skipped (its publish failed)")
                    continue
                q = f"bench-{name}-{impl}"
                argv = [self.impls[impl], "consume", "--url", url, "--queue", q, "--count", str(count),
                        "--prefetch", str(prefetch)]
                self.one(name, "consume", impl, argv, count, rnd)

    def latency(self):
        a = self.args
        if "swift" not in self.impls or a.lat_count <= 0:
            return
        probe = run([self.impls["swift"], "latency", "--help"], 30)
        if probe["rc"] != 0 or "--rate" not in probe["stdout"] + probe["stderr"]:
            progress("latency: the Swift binary has no `latency` subcommand; skipped")
            self.record({"workload": "latency", "op": "latency", "impl": "swift", "ok": False,
                         "skipped": True, "error": "no latency subcommand"})
            return
        progress(f"latency: {a.lat_count} messages at {a.lat_rate}/s")
        argv = [self.impls["swift"], "latency", "--url", a.url, "--queue", "bench-latency",
                "--rate", str(a.lat_rate), "--count", str(a.lat_count)]
        self.one("latency", "latency", "swift", argv, a.lat_count, 1)

    def connect_failures(self):
        a = self.args
        if "swift" not in self.impls or a.cf_count <= 0:
            return
        progress(f"connect-failures: {a.cf_count} attempts at a refusing port and at a silent peer")
        argv = [self.impls["swift"], "connect-failures", "--count", str(a.cf_count)]
        self.one("connect-failures", "connect-failures", "swift", argv, a.cf_count, 1)

    def memory(self):
        a = self.args
        if "swift" not in self.impls or a.mem_count <= 0:
            return
        progress(f"memory: fill with {a.mem_count} messages (C publisher), then Swift consumes them all")
        q = "bench-memory"
        pub = [self.impls["c"], "publish", "--url", a.url, "--queue", q, "--count", str(a.mem_count),
               "--size", str(a.size), "--window", str(a.window)]
        if not self.one("memory", "publish", "c", pub, a.mem_count, 1)["ok"]:
            return
        con = [self.impls["swift"], "consume", "--url", a.url, "--queue", q, "--count", str(a.mem_count),
               "--prefetch", str(a.prefetch)]
        self.one("memory", "consume", "swift", con, a.mem_count, 1)

    # -------------------------------------------------------------------------------------------------
    def report(self, header):
        a = self.args
        out = list(header)

        def ok(workload, op, impl):
            return [r for r in self.records
                    if r["workload"] == workload and r["op"] == op and r["impl"] == impl and r["ok"]]

        def runs(workload, op, impl):
            return [r for r in self.records if r["workload"] == workload and r["op"] == op and r["impl"] == impl
                    and not r.get("skipped")]

        def med(rs, key):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return statistics.median(vals) if vals else None

        def fmt(v, spec):
            if v is None:
                width = re.match(r"\d*", spec).group(0)
                return "-".rjust(int(width)) if width else "-"
            return format(v, spec)

        workloads = [("small", a.rounds, a.count, a.size, a.window, a.prefetch),
                     ("large", a.large_rounds, a.large_count, a.large_size, a.large_window, a.large_prefetch)]
        for name, rounds, count, size, window, prefetch in workloads:
            if rounds <= 0 or count <= 0:
                continue
            out.append("")
            out.append(f"== workload {name}: {count} x {size} B, window {window}, prefetch {prefetch}, "
                       f"{rounds} rounds (medians) ==")
            out.append(f"{'op':8s} {'impl':5s} {'rate msg/s':>11s} {'cpu us/msg':>11s} {'max RSS KiB':>12s} "
                       f"{'ok/runs':>8s}")
            meds = {}
            for op in ("publish", "consume"):
                for impl in self.impls:
                    good, all_ = ok(name, op, impl), runs(name, op, impl)
                    m = {"rate": med(good, "rate"), "cpu": med(good, "cpu_us_per_msg"), "rss": med(good, "rss_kib")}
                    meds[(op, impl)] = m
                    out.append(f"{op:8s} {impl:5s} {fmt(m['rate'], '11.0f')} {fmt(m['cpu'], '11.2f')} "
                               f"{fmt(m['rss'], '12.0f')} {len(good):>3d}/{len(all_):<4d}")
            for op in ("publish", "consume"):
                for impl in self.impls:
                    m = meds[(op, impl)]
                    n = len(ok(name, op, impl))
                    out.append(f"RESULT workload={name} op={op} impl={impl} count={count} size={size} "
                               f"rate={fmt(m['rate'], '.0f')} cpu_us_per_msg={fmt(m['cpu'], '.3f')} "
                               f"max_rss_kib={fmt(m['rss'], '.0f')} ok_runs={n} runs={len(runs(name, op, impl))}")
            if "swift" in self.impls:
                for op in ("publish", "consume"):
                    c, s = meds[(op, "c")], meds[(op, "swift")]
                    rr = s["rate"] / c["rate"] if c["rate"] and s["rate"] is not None else None
                    cr = s["cpu"] / c["cpu"] if c["cpu"] and s["cpu"] is not None else None
                    # Issue 10's targets: small messages 95% of C's rate at most 1.5 x its CPU; 1 MiB ones 90% of the rate.
                    large = name == "large"
                    target = "rate >= 0.90" if large else "rate >= 0.95, cpu <= 1.5"
                    verdict = "-"
                    if rr is not None and cr is not None:
                        met = rr >= 0.90 if large else rr >= 0.95 and cr <= 1.5
                        verdict = "PASS" if met else "FAIL"
                    out.append(f"ratio swift/c {op:8s} rate={fmt(rr, '.3f')} cpu={fmt(cr, '.3f')}   "
                               f"(target {target}: {verdict})")
                    out.append(f"RESULT ratio workload={name} op={op} rate={fmt(rr, '.3f')} cpu={fmt(cr, '.3f')} "
                               f"target={verdict}")
            else:
                out.append("ratio swift/c: n/a (C baseline only)")

        if "swift" in self.impls and a.lat_count > 0:
            out.append("")
            out.append(f"== latency (Swift): {a.lat_count} messages at {a.lat_rate} msg/s ==")
            lat = [r for r in self.records if r["op"] == "latency"]
            r = lat[-1] if lat else None
            if r and r["ok"]:
                out.append(f"p50 {r['p50us']:.0f} us, p99 {r['p99us']:.0f} us")
                out.append(f"RESULT latency impl=swift rate={a.lat_rate} msgs={r['msgs']} p50us={r['p50us']:.0f} "
                           f"p99us={r['p99us']:.0f}")
            else:
                why = r.get("error", "not run") if r else "not run"
                out.append(f"latency: not measured ({why})")
                out.append("RESULT latency impl=swift status=unavailable")

        if "swift" in self.impls and a.cf_count > 0:
            out.append("")
            out.append(f"== connection failures (Swift): {a.cf_count} attempts each ==")
            cf = [r for r in self.records if r["op"] == "connect-failures"]
            r = cf[-1] if cf else None
            if r and r["ok"]:
                out.append(f"refused port -> connectionRefused: p50 {r['refused_p50ms']:.1f} ms, "
                           f"max {r['refused_maxms']:.1f} ms")
                out.append(f"silent peer, {r['silent_timeoutms']:.0f} ms handshake timeout -> timeout: "
                           f"p50 {r['silent_overshoot_p50ms']:.1f} ms, max {r['silent_overshoot_maxms']:.1f} ms "
                           "after the timeout")
                out.append(f"RESULT connect_failures impl=swift n={r['msgs']} refused_p50ms={r['refused_p50ms']:.1f} "
                           f"refused_maxms={r['refused_maxms']:.1f} silent_timeoutms={r['silent_timeoutms']:.0f} "
                           f"silent_overshoot_p50ms={r['silent_overshoot_p50ms']:.1f} "
                           f"silent_overshoot_maxms={r['silent_overshoot_maxms']:.1f}")
            else:
                why = r.get("error", "not run") if r else "not run"
                out.append(f"connection failures: not measured ({why})")
                out.append("RESULT connect_failures impl=swift status=unavailable")

        if "swift" in self.impls and a.mem_count > 0:
            out.append("")
            out.append(f"== memory (Swift consume, {a.size} B messages, prefetch {a.prefetch}) ==")
            small = ok("small", "consume", "swift")
            big = [r for r in self.records if r["workload"] == "memory" and r["op"] == "consume" and r["ok"]]
            rss_small = med(small, "rss_kib")
            rss_big = big[-1]["rss_kib"] if big else None
            out.append(f"max RSS consuming {a.count:>9d}: {fmt(rss_small, '.0f')} KiB (median)")
            out.append(f"max RSS consuming {a.mem_count:>9d}: {fmt(rss_big, '.0f')} KiB")
            if rss_small and rss_big:
                growth = rss_big / rss_small
                flat = "flat" if growth <= 1.25 else "GROWS"
                out.append(f"growth x{growth:.2f} for x{a.mem_count / a.count:.0f} messages: {flat}")
                out.append(f"RESULT memory impl=swift rss_kib_{a.count}={rss_small:.0f} "
                           f"rss_kib_{a.mem_count}={rss_big} growth={growth:.3f} verdict={flat}")
            else:
                failed = [r for r in self.records if r["workload"] == "memory" and not r["ok"]]
                why = failed[-1].get("error", "") if failed else "not measured"
                out.append(f"memory: not measured ({why})")
                out.append("RESULT memory impl=swift status=unavailable")

        out.extend(bench_workloads.report(self, a))

        failures = [r for r in self.records if not r["ok"] and not r.get("skipped")]
        if failures:
            out.append("")
            out.append(f"== {len(failures)} failed runs ==")
            for r in failures:
                out.append(f"{r['workload']} {r['op']} {r['impl']} round {r.get('round', '-')}: {r.get('error', '')}")
        return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--c-bin", required=True)
    p.add_argument("--swift-bin", default="")
    p.add_argument("--swift-status", default="", help="shown in the report header")
    p.add_argument("--url", required=True)
    p.add_argument("--out", default="")
    p.add_argument("--raw", default="", help="JSON lines, one per run")
    p.add_argument("--timeout", type=float, default=900, help="seconds per process")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--count", type=int, default=100000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--prefetch", type=int, default=1000)
    p.add_argument("--large-rounds", type=int, default=3)
    p.add_argument("--large-count", type=int, default=2000)
    p.add_argument("--large-size", type=int, default=1048576)
    p.add_argument("--large-window", type=int, default=100)
    p.add_argument("--large-prefetch", type=int, default=100)
    p.add_argument("--lat-rate", type=int, default=5000)
    p.add_argument("--lat-count", type=int, default=50000)
    p.add_argument("--mem-count", type=int, default=1000000)
    p.add_argument("--cf-count", type=int, default=20)
    bench_workloads.add_arguments(p)
    p.add_argument("--header", action="append", default=[], help="extra header line (repeatable)")
    a = p.parse_args()

    b = Bench(a)
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    try:
        load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load_start = "?"
    t0 = time.monotonic()
    b.workload("small", a.rounds, a.count, a.size, a.window, a.prefetch)
    b.workload("large", a.large_rounds, a.large_count, a.large_size, a.large_window, a.large_prefetch)
    bench_workloads.run_all(b, a, run)
    b.latency()
    b.connect_failures()
    b.memory()

    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    header = [
        "# swift-rabbitmq benchmark report",
        f"started={started} duration_s={time.monotonic() - t0:.0f} host={platform.node()} "
        f"cpus={os.cpu_count()} loadavg_at_start={load_start} loadavg_at_end={load}",
        "NOTE: compare ratios within one run; absolute rates move with everything else running on the machine.",
        f"broker={redact(a.url)}",
        f"c_baseline={a.c_bin}",
        f"swift={a.swift_bin or 'none'}" + (f" ({a.swift_status})" if a.swift_status else ""),
    ] + a.header
    if not a.swift_bin:
        header.append("NOTE: C BASELINE ONLY - the Swift benchmark was not available; no ratios.")
    header.append("rate = the program's own timed section; cpu = the process's user+system CPU / messages "
                  "(includes connect and close); max RSS from GNU time.")
    lines = b.report(header)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    failed = [r for r in b.records if not r["ok"] and not r.get("skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
