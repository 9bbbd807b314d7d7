#!/usr/bin/env python3
"""Checks a running keeptyping through a real Prometheus and a headless Chromium.

Usage: live_check.py REPO HOOK_URL ADMIN_URL MOCK_URL PROMETHEUS_URL SCREENSHOT

The caller (.ci/deploy-checks.sh) has started the mock upstream, keeptyping and Prometheus on
loopback, and kills them afterwards. This script:
1. configures the mock: one account answers 503 (so it is paused), 15% of other typing calls
   answer 500 (so upstream errors exist), and a low per-minute limit (so the budget skips);
2. drives traffic: starts on several chats of two accounts, re-sent every few seconds, one stop
   after a while (a coverage sample), a start with a bad token (a 401 in the hook metrics);
3. asks Prometheus's HTTP API: the target is up, keeptyping_refires_total increases between two
   queries, every metric name the dashboard and the alert rules use is present, every dashboard
   expression evaluates, and the alert rules are loaded and healthy;
4. loads the status page in headless Chromium, checks the rendered DOM shows the live numbers
   that /status.json reports, and saves a screenshot.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import promql_names  # noqa: E402

TOKEN = "deploy-checks-token"
ADMIN_TOKEN = "deploy-checks-admin-token"
ACCOUNT_OK = "acct_0123456789abcdef0123456789abcdef"
ACCOUNT_PAUSED = "acct_fedcba9876543210fedcba9876543210"
FAILURES = []


def check(cond, what):
    print(("  ok    " if cond else "  FAIL  ") + what, flush=True)
    if not cond:
        FAILURES.append(what)
    return cond


def http(url, body=None, token=TOKEN, timeout=5):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url, token=None):
    status, body = http(url, token=token)
    if status != 200:
        raise RuntimeError(f"GET {url}: {status} {body[:200]!r}")
    return json.loads(body)


class Traffic(threading.Thread):
    """Keeps chats typing the way a chat tool does: a start every few seconds per chat."""

    def __init__(self, hook):
        super().__init__(daemon=True)
        self.hook = hook
        self.stop_event = threading.Event()
        self.chats = [(ACCOUNT_OK, str(100 + i)) for i in range(6)] + [(ACCOUNT_PAUSED, "900")]
        self.statuses = {}
        self.stopped_one = False

    def run(self):
        started = time.monotonic()
        while not self.stop_event.is_set():
            for account, chat in self.chats:
                s, _ = http(f"{self.hook}/v1/typing/start", {"account_id": account, "chat_id": chat})
                self.statuses[s] = self.statuses.get(s, 0) + 1
            if not self.stopped_one and time.monotonic() - started > 8:
                account, chat = self.chats.pop(0)
                s, _ = http(f"{self.hook}/v1/typing/stop", {"account_id": account, "chat_id": chat})
                self.statuses[s] = self.statuses.get(s, 0) + 1
                self.stopped_one = True
            self.stop_event.wait(4)


def prom_query(prom, expr):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    d = get_json(url)
    if d.get("status") != "success":
        raise RuntimeError(f"query {expr!r}: {d}")
    return d["data"]["result"]


def prom_value(prom, expr):
    r = prom_query(prom, expr)
    return float(r[0]["value"][1]) if r else None


def wait_for(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 - keep polling until the deadline
            pass
        time.sleep(1)
    return check(False, f"{what} (waited {timeout} s)")


def chromium(args, timeout=60):
    with tempfile.TemporaryDirectory() as profile:
        cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def text_of(dom, element_id):
    m = re.search(rf'id="{element_id}"[^>]*>(.*?)</', dom, re.S)
    return m.group(1).strip() if m else None


def main():
    repo, hook, admin, mock, prom, screenshot = sys.argv[1:7]
    repo = Path(repo)

    print("live: configure the mock upstream and drive traffic")
    status, _ = http(f"{mock}/_mock/config", {
        "limit_per_minute": 120, "error_rate": 0.15, "error_status": 500,
        "account_status": {ACCOUNT_PAUSED: 503},
    }, token=None)
    check(status in (200, 204), f"mock accepted its fault configuration ({status})")
    traffic = Traffic(hook)
    traffic.start()
    bad, _ = http(f"{hook}/v1/typing/start", {"account_id": ACCOUNT_OK, "chat_id": "1"}, token="wrong")
    check(bad == 401, f"a start with a bad token is refused ({bad})")
    # The rarer paths the documented metrics count: a watched authentication attempt (its state
    # changes are called back to the configured callback URL) and an unsigned webhook.
    watched, _ = http(f"{hook}/v1/auth-attempts", {"attempt_id": "att_deploy_checks_1"})
    check(watched in (200, 201, 202), f"an authentication attempt is watched ({watched})")
    unsigned, _ = http(f"{hook}/v1/webhooks/onlyfansapi", {"event": "accounts.session_expired"}, token=None)
    check(unsigned in (400, 401, 403, 503), f"an unsigned webhook is refused ({unsigned})")

    try:
        print("live: Prometheus scrapes keeptyping")
        wait_for("Prometheus sees the keeptyping target up",
                 lambda: prom_value(prom, 'up{job="keeptyping"}') == 1.0, 30)
        wait_for("keeptyping_refires_total reaches Prometheus",
                 lambda: (prom_value(prom, "sum(keeptyping_refires_total)") or 0) > 0, 30)
        first = prom_value(prom, "sum(keeptyping_refires_total)")
        wait_for("keeptyping_refires_total increases between two queries",
                 lambda: prom_value(prom, "sum(keeptyping_refires_total)") > first, 20)
        second = prom_value(prom, "sum(keeptyping_refires_total)")
        print(f"        keeptyping_refires_total: {first:.0f} then {second:.0f}")

        # Every name used by the dashboard and the alerts; the traffic above produces all of
        # them (the stop gives a coverage sample, the budget and the 503 account give skips,
        # pauses and gaps). Label values that need other faults (outcome="unauthorized") are
        # checked only as families.
        names = set()
        for _, e in promql_names.dashboard_exprs(repo) + promql_names.rule_exprs(repo):
            names |= promql_names.metric_names(e)
        check(len(names) >= 15, f"{len(names)} metric names used by the dashboard and alerts")
        # And every name README.md and docs/*.md tell operators to watch: a histogram as its
        # _count series. Series of rare events exist from start-up at zero.
        _, histograms = promql_names.exported(repo)
        documented, _ = promql_names.readme_series(repo)
        names |= {f"{n}_count" if n in histograms else n for n in documented}
        check(len(documented) >= 20, f"{len(documented)} metric names documented in README.md and docs/*.md")

        def all_present():
            missing = [n for n in sorted(names) if not prom_query(prom, f'count({{__name__="{n}"}})')]
            all_present.missing = missing
            return not missing
        all_present.missing = sorted(names)
        ok = wait_for("every metric name used by the dashboard and the alerts, or documented, is in Prometheus",
                      all_present, 45)
        if ok:
            check(True, f"present in Prometheus: {', '.join(sorted(names))}")
        else:
            print(f"        missing: {all_present.missing}")

        def outcomes():
            return {r["metric"]["outcome"] for r in prom_query(prom, "sum by (outcome) (keeptyping_refires_total)")}
        if wait_for("Prometheus sees refire outcomes ok, server_error and unavailable",
                    lambda: {"ok", "server_error", "unavailable"} <= outcomes(), 30):
            check(True, f"refire outcomes seen: {sorted(outcomes())}")

        print("live: every dashboard expression evaluates in Prometheus")
        empty = []
        for title, expr in promql_names.dashboard_exprs(repo):
            q = expr.replace("$__rate_interval", "1m").replace('=~"$job"', '=~".+"')
            try:
                if not prom_query(prom, q):
                    empty.append(title)
            except Exception as e:  # noqa: BLE001 - report the expression that failed
                check(False, f"dashboard {title}: {q!r} does not evaluate: {e}")
        print(f"        expressions with no data yet (fine for rates over a short run): {sorted(set(empty)) or 'none'}")

        rules = get_json(f"{prom}/api/v1/rules")["data"]["groups"]
        loaded = {r["name"]: r for g in rules for r in g["rules"]}
        wanted = {r for _, r in [(a, a) for a, _ in promql_names.rule_exprs(repo)]}
        check(wanted <= set(loaded), f"Prometheus loaded the {len(wanted)} alert rules")
        unhealthy = [n for n, r in loaded.items() if r.get("health") not in ("ok", "unknown")]
        check(not unhealthy, f"every rule evaluates without error ({unhealthy or 'all ok'})")

        print("live: the status page")
        s1 = get_json(f"{admin}/status.json", token=ADMIN_TOKEN)
        time.sleep(2.5)
        s = get_json(f"{admin}/status.json", token=ADMIN_TOKEN)
        anonymous = get_json(f"{admin}/status.json")
        check(ACCOUNT_PAUSED not in json.dumps(anonymous) and anonymous["paused_accounts_count"] == 1,
              "/status.json without the admin token: a count, no account id")
        check(s["sessions_active"] >= 5, f"/status.json: {s['sessions_active']} active sessions")
        check(s["refires_per_second"] is not None and s["refires_per_second"] > 0,
              f"/status.json: {s['refires_per_second']} refires per second")
        check(s["refires_total"] > s1["refires_total"], "/status.json: refires_total increases")
        check(any(b["name"] == "default" for b in s["budgets"]), "/status.json: the default budget")
        check([p["account_id"] for p in s["paused_accounts"]] == [ACCOUNT_PAUSED],
              f"/status.json: the 503 account is paused ({s['paused_accounts']})")
        errs = s["recent_errors"]
        check(0 < len(errs) <= 20 and {e["outcome"] for e in errs} <= {"server_error", "unavailable"},
              f"/status.json: {len(errs)} recent upstream errors, outcomes {sorted({e['outcome'] for e in errs})}")
        leak = [e for e in errs if set(e) != {"at_unix_ms", "platform", "outcome", "status"}]
        check(not leak, "recent errors carry only time, platform, outcome and status (no ids)")

        status, page = http(f"{admin}/", token=None)
        page = page.decode()
        check(status == 200 and "<script>" in page, "GET / answers the HTML page")
        check(not re.search(r'(src|href)\s*=|https?://|@import', page),
              "the page loads nothing from elsewhere (self-contained)")

        r = chromium(["--virtual-time-budget=6000", "--dump-dom", f"{admin}/?token={ADMIN_TOKEN}"])
        dom = r.stdout
        check(r.returncode == 0 and "<tbody" in dom, f"headless Chromium rendered the page (exit {r.returncode})")
        live = get_json(f"{admin}/status.json", token=ADMIN_TOKEN)
        sessions = text_of(dom, "sessions")
        check(sessions is not None and sessions.isdigit() and int(sessions) == live["sessions_active"],
              f"DOM shows the active sessions ({sessions}, service says {live['sessions_active']})")
        rate = text_of(dom, "rate")
        check(rate is not None and re.fullmatch(r"[0-9]+\.[0-9]{2}", rate) is not None and float(rate) > 0,
              f"DOM shows refires per second ({rate})")
        total = text_of(dom, "refires")
        check(total is not None and total.isdigit() and 0 < int(total) <= live["refires_total"],
              f"DOM shows refires since start ({total})")
        budgets = re.search(r'id="budgets">(.*?)</tbody>', dom, re.S)
        check(budgets is not None and "<td>default</td>" in budgets.group(1) and 'class="bar' in budgets.group(1),
              "DOM shows the default budget with its bars")
        paused = re.search(r'id="paused">(.*?)</tbody>', dom, re.S)
        check(paused is not None and ACCOUNT_PAUSED in paused.group(1), "DOM lists the paused account")
        errors = re.search(r'id="errors">(.*?)</tbody>', dom, re.S)
        rows = errors.group(1).count("<tr>") if errors else 0
        check(rows > 0 and "none" not in errors.group(1), f"DOM lists the last upstream errors ({rows} rows)")
        check(text_of(dom, "state") == "ready", f"DOM shows the service ready ({text_of(dom, 'state')})")

        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(screenshot):
            os.remove(screenshot)
        r = chromium(["--virtual-time-budget=6000", "--hide-scrollbars", "--window-size=1280,1000",
                      f"--screenshot={os.path.abspath(screenshot)}", f"{admin}/?token={ADMIN_TOKEN}"])
        size = os.path.getsize(screenshot) if os.path.exists(screenshot) else 0
        check(r.returncode == 0 and size > 10_000, f"screenshot saved to {screenshot} ({size} bytes)")
    finally:
        traffic.stop_event.set()
        traffic.join(timeout=10)
    check(traffic.statuses.get(200, 0) > 0 and set(traffic.statuses) <= {200},
          f"hook answers during the run: {traffic.statuses}")

    if FAILURES:
        print(f"live_check: {len(FAILURES)} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
