#!/usr/bin/env python3
"""Soak: thousands of churning typing sessions against the real binary and the mock upstream.

Loopback only, bounded in time, stops by itself, kills its children on exit. Python standard
library only (no pip package needed).

  python3 .ci/soak.py [--bin target/debug/keeptyping] [--sessions 2000] [--duration 600]
                      [--warmup 60] [--mock-restarts 2]

What it does:
  * starts `keeptyping mock-upstream` and `keeptyping serve` on free 127.0.0.1 ports;
  * keeps --sessions chats composing: every second it refreshes the chats whose lease is
    5 s old (batched starts; each chat is refreshed about every 5 s, well inside its 15 s idle lease), stops
    about 5% and starts new chats in their place, and abandons about 1% (never stopped: their
    idle lease must end them);
  * restarts the mock --mock-restarts times (kill, 2 s down, start on the same port);
  * samples the service's resident memory (VmRSS of /proc/PID/status) every second;
  * at the end stops every chat it holds, waits past the idle lease, and checks:
      - RSS at the end within 10% of RSS after warm-up,
      - no session left behind (keeptyping_sessions_active == 0),
      - started_total == ended_total + active (read from /metrics).
Exit 0 when every check holds, 1 otherwise. Prints a summary either way.
"""

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

HOOK_TOKEN = "soak-hook-token-6c1f0e"
API_KEY = "soak-api-key-93ab27"
ACCOUNT = "acct_0123456789abcdef0123456789abcdef"
IDLE_TIMEOUT_S = 15
REFRESH_EVERY_S = 5
BATCH = 500


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, token=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series == name or series.startswith(name + "{"):
            total += float(value)
    return total


class Soak:
    def __init__(self, args):
        self.args = args
        self.children = []
        self.mock = None
        self.mock_port = free_port()
        self.hook_port = free_port()
        self.admin_port = free_port()
        self.hook = f"http://127.0.0.1:{self.hook_port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.next_chat = 1
        self.live = []  # chat ids we hold
        self.hook_errors = {}
        self.hook_5xx = 0
        self.refreshed = {}  # chat -> when its lease was last refreshed

    # --- children ---------------------------------------------------------------------------

    def start_mock(self):
        self.mock = subprocess.Popen(
            [self.args.bin, "mock-upstream", "--listen", f"127.0.0.1:{self.mock_port}", "--limit-per-minute", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.children.append(self.mock)
        self.wait_http(f"http://127.0.0.1:{self.mock_port}/_mock/stats")

    def stop_mock(self):
        if self.mock and self.mock.poll() is None:
            self.mock.kill()
            self.mock.wait()

    def start_service(self):
        env = dict(os.environ)
        env.update(
            {
                "KEEPTYPING__SERVER__LISTEN": f"127.0.0.1:{self.hook_port}",
                "KEEPTYPING__ADMIN__LISTEN": f"127.0.0.1:{self.admin_port}",
                "KEEPTYPING__UPSTREAM__BASE_URL": f"http://127.0.0.1:{self.mock_port}",
                "KEEPTYPING__ENGINE__IDLE_TIMEOUT": f"{IDLE_TIMEOUT_S}s",
                "KEEPTYPING__BUDGET__LIMIT_PER_MINUTE": "10000000",
                "KEEPTYPING__BUDGET__BURST": "100000",
                "KEEPTYPING__HOOKS__RATE_LIMIT_PER_SECOND": "0",
                "KEEPTYPING__ACCOUNTS__UNAVAILABLE_PAUSE": "2s",
                "ONLYFANSAPI_API_KEY": API_KEY,
                "KEEPTYPING_HOOK_TOKEN": HOOK_TOKEN,
                "RUST_LOG": "warn",
            }
        )
        self.service = subprocess.Popen(
            [self.args.bin, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.children.append(self.service)
        self.wait_http(f"{self.admin}/readyz")

    def wait_http(self, url, deadline_s=20):
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                if http("GET", url, timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"soak: {url} did not come up")

    def kill_all(self):
        for c in self.children:
            if c.poll() is None:
                c.kill()
                c.wait()

    # --- traffic ----------------------------------------------------------------------------

    def batch(self, events):
        for i in range(0, len(events), BATCH):
            status, body = http("POST", f"{self.hook}/v1/typing/batch", {"events": events[i : i + BATCH]}, HOOK_TOKEN)
            if status != 200:
                self.hook_errors[status] = self.hook_errors.get(status, 0) + 1
                if status >= 500:
                    self.hook_5xx += 1

    def event(self, action, chat):
        return {"action": action, "account_id": ACCOUNT, "chat_id": str(chat)}

    def churn(self):
        want = self.args.sessions
        random.shuffle(self.live)
        n_stop = len(self.live) // 20
        n_abandon = len(self.live) // 100
        stopped, abandoned = self.live[:n_stop], self.live[n_stop : n_stop + n_abandon]
        self.live = self.live[n_stop + n_abandon :]
        # Abandoned chats are never stopped: their idle lease must end them.
        new = []
        while len(self.live) + len(new) < want:
            new.append(self.next_chat)
            self.next_chat += 1
        now = time.monotonic()
        refresh = [c for c in self.live if now - self.refreshed.get(c, 0.0) >= REFRESH_EVERY_S]
        for c in stopped + abandoned:
            self.refreshed.pop(c, None)
        for c in refresh + new:
            self.refreshed[c] = now
        events = [self.event("stop", c) for c in stopped] + [self.event("start", c) for c in refresh + new]
        self.live.extend(new)
        self.batch(events)

    def metrics(self):
        return http("GET", f"{self.admin}/metrics")[1].decode()

    # --- run --------------------------------------------------------------------------------

    def run(self):
        a = self.args
        self.start_mock()
        self.start_service()
        pid = self.service.pid
        t0 = time.monotonic()
        restarts_at = [a.duration * (i + 1) / (a.mock_restarts + 1) for i in range(a.mock_restarts)]
        samples = []
        warm_rss = None
        restarts = 0
        next_report = 0.0
        while (elapsed := time.monotonic() - t0) < a.duration:
            tick = time.monotonic()
            if restarts < len(restarts_at) and elapsed >= restarts_at[restarts]:
                self.stop_mock()
                time.sleep(2)
                self.start_mock()
                restarts += 1
                print(f"[{elapsed:6.0f}s] mock restarted ({restarts}/{a.mock_restarts})", flush=True)
            self.churn()
            if self.service.poll() is not None:
                raise SystemExit(f"soak: the service exited with {self.service.returncode}")
            rss = rss_kib(pid)
            samples.append((elapsed, rss))
            if warm_rss is None and elapsed >= a.warmup:
                warm_rss = rss
                print(f"[{elapsed:6.0f}s] warm-up done: RSS {rss} KiB", flush=True)
            if elapsed >= next_report:
                m = self.metrics()
                print(
                    f"[{elapsed:6.0f}s] RSS {rss} KiB, active {metric(m, 'keeptyping_sessions_active'):.0f}, "
                    f"refires {metric(m, 'keeptyping_refires_total'):.0f}",
                    flush=True,
                )
                next_report += 30
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        end_rss = rss_kib(pid)
        # Let every session go: stop those we hold; abandoned ones end by their idle lease.
        self.batch([self.event("stop", c) for c in self.live])
        time.sleep(IDLE_TIMEOUT_S + 2)
        m = self.metrics()
        started = metric(m, "keeptyping_sessions_started_total")
        ended = metric(m, "keeptyping_sessions_ended_total")
        active = metric(m, "keeptyping_sessions_active")
        peak = max(r for _, r in samples)
        growth = (end_rss - warm_rss) / warm_rss if warm_rss else float("nan")
        checks = {
            "rss_within_10pct": warm_rss is not None and abs(growth) <= 0.10,
            "no_session_left": active == 0,
            "counters_consistent": started == ended + active,
            "no_hook_5xx": self.hook_5xx == 0,
            "mock_restarted": restarts == a.mock_restarts,
        }
        summary = {
            "duration_s": a.duration,
            "sessions": a.sessions,
            "chats_started": self.next_chat - 1,
            "mock_restarts": restarts,
            "rss_kib": {"after_warmup": warm_rss, "end": end_rss, "peak": peak, "growth_pct": round(100 * growth, 2)},
            "sessions_started_total": started,
            "sessions_ended_total": ended,
            "sessions_active": active,
            "refires_total": metric(m, "keeptyping_refires_total"),
            "hook_non_200": self.hook_errors,
            "checks": checks,
        }
        print(json.dumps(summary, indent=2), flush=True)
        return all(checks.values())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="target/debug/keeptyping")
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--duration", type=float, default=600, help="seconds of churn")
    p.add_argument("--warmup", type=float, default=60, help="seconds before the RSS baseline")
    p.add_argument("--mock-restarts", type=int, default=2)
    args = p.parse_args()
    soak = Soak(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        ok = soak.run()
    finally:
        soak.kill_all()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
