#!/usr/bin/env python3
"""The metric names that the dashboard and the alert rules use, checked against the service.

Usage:
  promql_names.py check REPO     parse the dashboard and the rules; fail if an expression names
                                 a metric the service does not export (names and histogram
                                 suffixes read from src/metrics.rs)
  promql_names.py list REPO      print every metric name they use, one per line
  promql_names.py exprs REPO     print every dashboard expression, one JSON string per line
  promql_names.py readme REPO    only the README part of `check`: every metric README.md and
                                 docs/*.md name is exported, and every label value they list (the
                                 metrics table's `label`: a, b, c lists and name{label="value"}
                                 selectors) has a place in src/ that emits it

A metric name in PromQL is an identifier that is not a function call, a keyword, an aggregation
modifier's label list, or inside a label matcher or a range; everything else is removed before
the identifiers are collected.
"""

import json
import re
import sys
from pathlib import Path

import yaml

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan", "atan2",
}
# Series Prometheus itself creates for every scrape target.
PROMETHEUS_SERIES = {"up"}


def exported(repo):
    """(names, histograms) exported by src/metrics.rs."""
    src = (repo / "src/metrics.rs").read_text()
    consts = dict(re.findall(r'pub const ([A-Z_]+): &str = "([a-z_]+)";', src))
    hist_consts = set(re.findall(r"describe_histogram!\(\s*([A-Z_]+)", src))
    histograms = {consts[c] for c in hist_consts}
    names = set(consts.values()) - histograms
    for h in histograms:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names, histograms


def dashboard_exprs(repo):
    dash = json.loads((repo / "deploy/grafana/keeptyping.json").read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                exprs.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", q)
            exprs.append((f"variable {v['name']}", m.group(1) if m else q))
    return exprs


def rule_exprs(repo):
    rules = yaml.safe_load((repo / "deploy/prometheus/keeptyping-rules.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    e = re.sub(r"\{[^}]*\}", " ", e)                       # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                      # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\w+", " ", e)                           # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        ident = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or ident.lower() in KEYWORDS:
            continue
        if re.fullmatch(r"[0-9.eE+-]+", ident):
            continue
        names.add(ident)
    return names


def readme_series(repo):
    """(names, {(name, label): values}) that README.md and docs/*.md tell operators about."""
    docs = [repo / "README.md"] + sorted((repo / "docs").glob("*.md"))
    text = "\n".join(p.read_text() for p in docs)
    names = set(re.findall(r"\bkeeptyping_[a-z0-9_]+", text))
    values = {}
    for m in re.finditer(r"^\| `(keeptyping_[a-z0-9_]+)` \| \w+ \| (.*)\|\s*$", text, re.M):
        for lm in re.finditer(r"`(\w+)`: ([^|(`]+)", m.group(2)):
            listed = {v.strip() for v in lm.group(2).split(",") if re.fullmatch(r"[a-z0-9_./]+", v.strip())}
            values.setdefault((m.group(1), lm.group(1)), set()).update(listed)
    # Prose: `keeptyping_x_total{reason}` with `a`, `b`, `c`.
    for m in re.finditer(r"`(keeptyping_[a-z0-9_]+)\{(\w+)\}` with ((?:\s*`[a-z0-9_]+`,?(?:\s*and)?)+)", text):
        values.setdefault((m.group(1), m.group(2)), set()).update(re.findall(r"`([a-z0-9_]+)`", m.group(3)))
    for m in re.finditer(r'(keeptyping_[a-z0-9_]+)\{(\w+)="([a-z0-9_]+)"\}', text):
        values.setdefault((m.group(1), m.group(2)), set()).add(m.group(3))
    return names, values


def emitted_values(repo):
    """Label values the code can emit: string literals outside metrics.rs and the mock, and the
    values metrics.rs maps from an enum variant that some other module uses."""
    src = repo / "src"
    metrics = (src / "metrics.rs").read_text()
    others = "\n".join(p.read_text() for p in src.rglob("*.rs")
                       if p.name != "metrics.rs" and "mock" not in p.relative_to(src).parts)
    mapped = re.findall(r'Self::(\w+) => "([a-z0-9_]+)"', metrics)
    # A value metrics.rs maps from a variant is emitted only where that variant is used.
    values = set(re.findall(r'"([a-z0-9_./]+)"', others)) - {value for _, value in mapped}
    enums = "|".join(re.findall(r"pub enum (\w+)", metrics)) or "NoEnum"
    for variant, value in mapped:
        if re.search(rf"\b(?:{enums})::{variant}\b", others):
            values.add(value)
    return values


def check_readme(repo):
    """Fails on every metric or label value in README.md or docs/*.md that the service never emits."""
    names, histograms = exported(repo)
    readme_names, readme_values = readme_series(repo)
    emitted = emitted_values(repo)
    ok = True
    for n in sorted(readme_names):
        if n not in names and n not in histograms:
            print(f"  FAIL  README.md or docs/*.md names {n}, which src/metrics.rs does not export")
            ok = False
    for (name, label), vals in sorted(readme_values.items()):
        for v in sorted(vals - emitted):
            print(f'  FAIL  README.md or docs/*.md names {name}{{{label}="{v}"}}, which nothing in src/ emits')
            ok = False
    count = sum(len(v) for v in readme_values.values())
    print(f"  {'ok  ' if ok else 'FAIL'}  README.md and docs/*.md: {len(readme_names)} metric names and {count} label values, "
          "each exported and emitted somewhere in src/")
    return ok


def main():
    mode, repo = sys.argv[1], Path(sys.argv[2])
    exprs = dashboard_exprs(repo) + rule_exprs(repo)
    if mode == "exprs":
        for _, e in dashboard_exprs(repo):
            print(json.dumps(e))
        return
    if mode == "readme":
        sys.exit(0 if check_readme(repo) else 1)
    used = set()
    for _, e in exprs:
        used |= metric_names(e)
    if mode == "list":
        print("\n".join(sorted(used)))
        return
    names, histograms = exported(repo)
    ok = True
    if len(names) < 10:
        print(f"  FAIL  read only {len(names)} metric names from src/metrics.rs")
        ok = False
    for where, e in exprs:
        found = metric_names(e)
        if not found:
            print(f"  FAIL  {where}: no metric name found in {e!r}")
            ok = False
        for n in sorted(found):
            if n not in names and n not in PROMETHEUS_SERIES:
                print(f"  FAIL  {where}: {n} is not exported by the service")
                ok = False
            for h in histograms:
                if n == h:
                    print(f"  FAIL  {where}: histogram {n} used without _bucket/_sum/_count")
                    ok = False
    dash_used = set()
    for _, e in dashboard_exprs(repo):
        dash_used |= metric_names(e)
    required = {
        "sessions": "keeptyping_sessions_active",
        "refires by outcome": "keeptyping_refires_total",
        "coverage": "keeptyping_indicator_coverage_ratio_sum",
        "lateness quantiles": "keeptyping_refire_lateness_seconds_bucket",
        "upstream latency quantiles": "keeptyping_upstream_request_duration_seconds_bucket",
        "budget tokens": "keeptyping_budget_tokens",
        "budget limit": "keeptyping_upstream_limit_minute",
        "budget remaining": "keeptyping_upstream_remaining_minute",
        "hook traffic and errors": "keeptyping_hook_requests_total",
    }
    for what, metric in required.items():
        if metric not in dash_used:
            print(f"  FAIL  dashboard shows no {what} ({metric})")
            ok = False
    exprs_text = " ".join(e for _, e in dashboard_exprs(repo))
    if "histogram_quantile" not in exprs_text or 'by (outcome)' not in exprs_text or "by (budget)" not in exprs_text:
        print("  FAIL  dashboard lacks quantiles, the outcome breakdown or the per-budget breakdown")
        ok = False
    ok = check_readme(repo) and ok
    print(f"  {'ok  ' if ok else 'FAIL'}  {len(exprs)} expressions ({len(dashboard_exprs(repo))} dashboard, "
          f"{len(rule_exprs(repo))} alert) name only exported metrics: {', '.join(sorted(used))}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
