#!/usr/bin/env python3
"""Every alert in the rule file has, in the promtool unit tests, at least one evaluation where
it fires and one where it stays silent.

Usage: check_rule_tests.py RULES TESTS
"""

import sys

import yaml

rules = yaml.safe_load(open(sys.argv[1]))
tests = yaml.safe_load(open(sys.argv[2]))
alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
firing, silent = set(), set()
for t in tests["tests"]:
    for a in t.get("alert_rule_test", []):
        (firing if a.get("exp_alerts") else silent).add(a["alertname"])
ok = True
for a in alerts:
    good = a in firing and a in silent
    ok &= good
    print(f"  {'ok  ' if good else 'FAIL'}  {a}: firing case {'yes' if a in firing else 'NO'}, "
          f"silent case {'yes' if a in silent else 'NO'}")
unknown = (firing | silent) - set(alerts)
if unknown:
    print(f"  FAIL  tests name alerts that do not exist: {sorted(unknown)}")
    ok = False
if len(alerts) < 10:
    print(f"  FAIL  only {len(alerts)} alerts")
    ok = False
sys.exit(0 if ok else 1)
