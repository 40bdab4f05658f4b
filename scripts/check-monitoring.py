#!/usr/bin/env python3
"""Checks examples/monitoring/ against the host's code, so the examples cannot drift from it.

Run by `make test` (and alone: `make check-monitoring`, or `python3 scripts/check-monitoring.py`):

- alerts.yml: every alert has a `for:`, a `severity` label (critical, warning, info), a summary,
  a description and a `runbook` that points at an existing file and heading of the repository;
  alerts_test.yml shows every alert both firing and silent;
- grafana-dashboard.json parses, chooses its Prometheus through the `datasource` variable (no
  data source uid written in), and its panels have unique ids;
- every metric name used by the rules, the dashboard's queries and the unit tests' input series
  is one the host exports: collected from the `counter!`/`gauge!`/`histogram!` calls in
  runtime/src (a histogram as its `_bucket`, `_sum` and `_count` series), plus those listed in
  metrics-pending.txt (names being added by work not merged yet; a listed name the code
  already has is an error, so the list empties as the code lands; the file may be deleted then)
  and Prometheus' own `up`;
- with promtool (on PATH, or target/tools/promtool/promtool as `scripts/install-deps.sh test`
  installs it): `promtool check rules alerts.yml`, `promtool test rules alerts_test.yml`, and
  every dashboard query parsed by promtool (as rules of a temporary file). Without promtool
  these three are skipped, and the script says so.

Exit 0 when everything holds, 1 with every problem listed otherwise.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

try:
    import yaml
except ImportError:
    sys.exit("check-monitoring: Python's yaml module is missing (Debian: apt-get install python3-yaml; "
             "`scripts/install-deps.sh test` installs it)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MON = os.path.join(ROOT, "examples", "monitoring")
RULES = os.path.join(MON, "alerts.yml")
TESTS = os.path.join(MON, "alerts_test.yml")
DASHBOARD = os.path.join(MON, "grafana-dashboard.json")
PENDING = os.path.join(MON, "metrics-pending.txt")
SOURCE = os.path.join(ROOT, "runtime", "src")

# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up"}
SEVERITIES = {"critical", "warning", "info"}

# A metrics macro call and its name: `metrics::counter!("name", …)`, possibly over lines.
MACRO = re.compile(r'\b(counter|gauge|histogram)!\s*\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')
# PromQL words that are not metric names (when not followed by a parenthesis).
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
    "unless", "atan2", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
    "count_values", "bottomk", "topk", "quantile", "inf", "nan",
}
# Grafana's variables, replaced by something PromQL accepts.
GRAFANA_VARS = [
    (re.compile(r"\$__rate_interval|\$__interval|\$__range"), "5m"),
    (re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?"), ".*"),
]

problems = []


def problem(where, msg):
    problems.append(f"{os.path.relpath(where, ROOT)}: {msg}")


def exported_metrics():
    """Names of the series the host's code exports: {series name: metric name}."""
    names = {}
    for dirpath, _, files in os.walk(SOURCE):
        for f in files:
            if not f.endswith(".rs"):
                continue
            with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                for kind, name in MACRO.findall(fh.read()):
                    names.update(series_of(name, kind))
    return names


def series_of(name, kind):
    if kind == "histogram":
        return {name + s: name for s in ("_bucket", "_sum", "_count")}
    return {name: name}


def pending_metrics():
    """metrics-pending.txt: {series name: metric name}, and the metric names with their line."""
    series, lines = {}, {}
    if not os.path.exists(PENDING):  # deleted once every name in it has landed
        return series, lines
    with open(PENDING, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("counter", "gauge", "histogram"):
                problem(PENDING, f"line {n}: expected `NAME counter|gauge|histogram`, found {line!r}")
                continue
            series.update(series_of(parts[0], parts[1]))
            lines[parts[0]] = n
    return series, lines


def metric_names(expr):
    """The metric names a PromQL expression reads."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1 ", e)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def grafana_to_promql(expr):
    for pattern, value in GRAFANA_VARS:
        expr = pattern.sub(value, expr)
    return expr


def github_anchors(path):
    """The anchors GitHub gives a Markdown file's headings."""
    anchors = set()
    in_code = False
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("```"):
                in_code = not in_code
            m = None if in_code else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m:
                slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
                anchors.add(slug)
    return anchors


def check_rules(known):
    with open(RULES, encoding="utf-8") as fh:
        rules = yaml.safe_load(fh)
    alerts, records = [], set()
    for group in rules.get("groups") or []:
        for rule in group.get("rules") or []:
            if "record" in rule:
                records.add(rule["record"])
            elif "alert" in rule:
                alerts.append(rule)
    used = {}
    for rule in alerts:
        name = rule["alert"]
        if not rule.get("for"):
            problem(RULES, f"{name}: no `for:` (one bad scrape would page)")
        severity = (rule.get("labels") or {}).get("severity")
        if severity not in SEVERITIES:
            problem(RULES, f"{name}: severity {severity!r}, expected one of {sorted(SEVERITIES)}")
        ann = rule.get("annotations") or {}
        for key in ("summary", "description", "runbook"):
            if not ann.get(key):
                problem(RULES, f"{name}: no `{key}` annotation")
        runbook = ann.get("runbook")
        if runbook:
            path, _, anchor = runbook.partition("#")
            full = os.path.join(ROOT, path)
            if not os.path.isfile(full):
                problem(RULES, f"{name}: runbook {runbook}: no file {path}")
            elif anchor and anchor not in github_anchors(full):
                problem(RULES, f"{name}: runbook {runbook}: {path} has no heading #{anchor}")
    for rule in (r for g in rules.get("groups") or [] for r in g.get("rules") or []):
        label = rule.get("alert") or rule.get("record")
        for metric in metric_names(str(rule.get("expr", ""))):
            used.setdefault(metric, set()).add(f"rule {label}")
    report_unknown(RULES, used, known | records)
    return [r["alert"] for r in alerts], records


def check_tests(alert_names, known):
    with open(TESTS, encoding="utf-8") as fh:
        tests = yaml.safe_load(fh)
    fires, silent, used = set(), set(), {}
    for group in tests.get("tests") or []:
        for s in group.get("input_series") or []:
            metric = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", s["series"]).group(1)
            used.setdefault(metric, set()).add("an input series")
        for t in group.get("alert_rule_test") or []:
            (fires if t.get("exp_alerts") else silent).add(t["alertname"])
    for name in alert_names:
        if name not in fires:
            problem(TESTS, f"{name}: no test shows it firing")
        if name not in silent:
            problem(TESTS, f"{name}: no test shows it silent")
    for name in (fires | silent) - set(alert_names):
        problem(TESTS, f"tests alert {name}, which alerts.yml does not have")
    report_unknown(TESTS, used, known)


def check_dashboard(known, records):
    try:
        with open(DASHBOARD, encoding="utf-8") as fh:
            dash = json.load(fh)
    except (OSError, ValueError) as e:
        problem(DASHBOARD, f"not valid JSON: {e}")
        return []
    variables = (dash.get("templating") or {}).get("list") or []
    if not any(v.get("type") == "datasource" and v.get("name") == "datasource" and v.get("query") == "prometheus"
               for v in variables):
        problem(DASHBOARD, "no `datasource` variable of type datasource (query prometheus)")
    exprs, ids, used = [], set(), {}

    def walk(panels):
        for p in panels:
            title = p.get("title", "?")
            if p.get("id") in ids:
                problem(DASHBOARD, f"panel {title!r}: id {p.get('id')} used twice")
            ids.add(p.get("id"))
            if "gridPos" not in p:
                problem(DASHBOARD, f"panel {title!r}: no gridPos")
            sources = [p.get("datasource")] + [t.get("datasource") for t in p.get("targets") or []]
            for ds in sources:
                if p.get("type") == "row" and ds is None:
                    continue
                if not isinstance(ds, dict) or ds.get("uid") not in ("${datasource}", "$datasource"):
                    problem(DASHBOARD, f"panel {title!r}: data source {ds!r}, expected uid ${{datasource}}")
            for t in p.get("targets") or []:
                expr = t.get("expr")
                if not expr:
                    problem(DASHBOARD, f"panel {title!r}: a target without a query")
                    continue
                exprs.append((title, expr))
                for metric in metric_names(grafana_to_promql(expr)):
                    used.setdefault(metric, set()).add(f"panel {title!r}")
            walk(p.get("panels") or [])

    walk(dash.get("panels") or [])
    for v in variables:
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.match(r"\s*label_values\((.*),\s*\w+\)\s*$", q or "")
            if not m:
                problem(DASHBOARD, f"variable {v.get('name')}: query {q!r} is not label_values(…, label)")
                continue
            for metric in metric_names(grafana_to_promql(m.group(1))):
                used.setdefault(metric, set()).add(f"variable {v.get('name')}")
    if not exprs:
        problem(DASHBOARD, "no queries")
    report_unknown(DASHBOARD, used, known | records)
    return exprs


def report_unknown(where, used, known):
    for metric in sorted(set(used) - known):
        problem(where, f"metric {metric} ({', '.join(sorted(used[metric]))}) is not exported by the host "
                       f"(no counter!/gauge!/histogram! in runtime/src names it, and "
                       f"{os.path.relpath(PENDING, ROOT)} does not list it)")


def find_promtool():
    local = os.path.join(ROOT, "target", "tools", "promtool", "promtool")
    return shutil.which("promtool") or (local if os.access(local, os.X_OK) else None)


def run(cmd, cwd):
    print(f"check-monitoring: (in {os.path.relpath(cwd, ROOT)}) " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    sys.stdout.write(r.stdout)
    return r.returncode == 0


def promtool_checks(promtool, exprs):
    if not run([promtool, "check", "rules", os.path.basename(RULES)], MON):
        problem(RULES, "promtool check rules failed (above)")
    if not run([promtool, "test", "rules", os.path.basename(TESTS)], MON):
        problem(TESTS, "promtool test rules failed (above)")
    # promtool has no offline query parser: the dashboard's queries become rules of a
    # temporary file, which `check rules` parses.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(exprs)]}]}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dashboard-queries.yml")
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(rules, fh)
        r = subprocess.run([promtool, "check", "rules", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=120)
    if r.returncode != 0:
        for line in r.stdout.splitlines():
            m = re.search(r"dashboard:query_(\d+)", line)
            if m:
                title, expr = exprs[int(m.group(1))]
                line += f"  [panel {title!r}: {expr}]"
            print("  " + line)
        problem(DASHBOARD, "promtool could not parse a query (above)")
    else:
        print(f"check-monitoring: promtool parsed the dashboard's {len(exprs)} queries")


def main():
    exported = exported_metrics()
    if not exported:
        sys.exit(f"check-monitoring: no counter!/gauge!/histogram! call found under {SOURCE}")
    pending, pending_lines = pending_metrics()
    for name, line in sorted(pending_lines.items(), key=lambda kv: kv[1]):
        if name in exported.values():
            problem(PENDING, f"line {line}: {name} is in runtime/src now: delete it from this list")
    known = set(exported) | set(pending) | PROMETHEUS_SERIES
    alert_names, records = check_rules(known)
    check_tests(alert_names, known)
    exprs = check_dashboard(known, records)
    promtool = find_promtool()
    if promtool:
        promtool_checks(promtool, exprs)
        skipped = ""
    else:
        skipped = "; promtool checks SKIPPED"
        print("check-monitoring: SKIPPED promtool check rules / test rules and the dashboard's query syntax: "
              "promtool is not on PATH nor in target/tools/promtool (`scripts/install-deps.sh test` installs it)")
    if problems:
        print(f"check-monitoring: {len(problems)} problem(s):")
        for p in problems:
            print("  " + p)
        return 1
    print(f"check-monitoring: ok — {len(alert_names)} alerts, {len(exprs)} dashboard queries, metric names "
          f"checked against {len(set(exported.values()))} metrics in runtime/src"
          + (f" and {len(pending_lines)} pending in {os.path.relpath(PENDING, ROOT)}" if pending_lines else "")
          + skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
