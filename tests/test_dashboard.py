"""deploy/grafana/supervisor.json and deploy/prometheus/prometheus.yml, checked by what reads them: every dashboard
expression by ``promtool check rules`` (one generated recording rule each) and by a real Prometheus, running the
scrape config, against a real ``supervisor run``; every metric the dashboard names against a real scrape.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from supervisor.config import load_config
from supervisor.plan import make_plan
from tests.e2e_util import require_tool, write_config
from tests.proc import REPO, SupervisorProcess
from tests.test_prometheus import METRICS_LINE, Prometheus

DASHBOARD = REPO / "deploy" / "grafana" / "supervisor.json"
SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's built-in intervals as a 15 s scrape interval gives them
INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
FROM_PROMETHEUS = {"up"}  # series Prometheus makes itself, not in the supervisor's /metrics
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, and the panels of collapsed rows."""
    return [q for p in dashboard["panels"] for q in (p, *p.get("panels", []))]


def expressions(dashboard: dict[str, Any], *, variables: bool = True) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and (the selector of) every query variable."""
    found = [
        (f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"])
        for p in panels(dashboard)
        for t in p.get("targets", [])
    ]
    found += [(f"annotation {a['name']!r}", a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    for var in dashboard["templating"]["list"] if variables else []:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert m, f"variable {var['name']}: not label_values(selector, label): {query}"
            found.append((f"variable {var['name']}", m[1]))
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    def value(m: re.Match[str]) -> str:
        assert m[1] in values, f"unknown variable ${m[1]} in {expr}"
        return values[m[1]]

    return re.sub(r"\$\{?(\w+)\}?", value, expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, labels or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    return set(re.findall(r"(?<![\w.:])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text)) - KEYWORDS


def test_the_name_extraction_sees_metrics_and_only_metrics() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (server, le) (rate(a_bucket{server=~"x|up"}[1m]))) * 1e3'
        " / on (server) group_left (reason) b_total and bool up offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "up"}


def test_the_dashboard_is_importable_anywhere() -> None:
    dashboard = load()
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    for name in ("job", "instance", "server"):
        assert (variables[name]["type"], variables[name]["datasource"]) == ("query", DATASOURCE)
    assert variables["server"]["definition"].endswith(", server)")
    every = panels(dashboard)
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    assert {p["title"] for p in every if p["type"] == "row"} >= {
        "Overview", "Servers", "Shutdown and drain", "Config reloads", "Event loop and resources",
    }  # fmt: skip
    cells: set[tuple[int, int]] = set()
    for p in every:
        pos = p["gridPos"]
        assert 0 <= pos["x"] < pos["x"] + pos["w"] <= 24, p["title"]
        mine = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, (p["title"], t)
            assert t["expr"].strip(), (p["title"], t)


def test_every_expression_filters_by_the_variables_and_ranges_by_grafanas_intervals() -> None:
    allowed = {f"${name}" for name in INTERVALS}
    for where, expr in expressions(load(), variables=False):
        for name in metric_names(expr):
            selectors = re.findall(rf"(?<![\w:]){name}(\{{[^}}]*\}})?", expr)
            assert all('job=~"$job"' in s and 'instance=~"$instance"' in s for s in selectors), (where, name)
        ranges = set(re.findall(r"\[([^\]]*)\]", expr))
        assert ranges <= allowed, f"{where}: a fixed range {ranges - allowed} in {expr}"
        if re.search(r"\brate\(", expr):
            assert ranges == {"$__rate_interval"}, f"{where}: rate() without $__rate_interval"


def test_promtool_accepts_every_expression(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    values = {"job": "supervisor", "instance": "127.0.0.1:9100", "server": "echo|http", **INTERVALS}
    exprs = expressions(load())
    assert len(exprs) > 30
    rules = [{"record": f"dashboard:expr_{i}", "expr": substitute(e, values)} for i, (_, e) in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_checks_the_scrape_config_aimed_at_the_demos_metrics_port() -> None:
    result = subprocess.run(
        [require_tool("promtool"), "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = yaml.safe_load((SCRAPE_CONFIG.parent / "alerts.yml").read_text())
    assert f"SUCCESS: {len(alerts['groups'][0]['rules'])} rules found" in result.stdout  # alerts.yml was loaded
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    metrics = make_plan(load_config(REPO / "configs" / "prod.yaml")).metrics
    targets = [t for job in config["scrape_configs"] for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"{metrics.host}:{metrics.port}"]


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[SupervisorProcess, int, dict[str, int]]]:
    """``supervisor run`` with metrics on a port it picks, an echo and an HTTP server, each having served a client."""
    config = write_config(
        tmp_path,
        """
        supervisor: {workers: 2}  # the worker panels need worker series; every other series is there as well
        metrics: {port: 0}
        console: {enabled: false}
        servers:
          - {name: echo, handler: "supervisor.handlers.echo:handle", port: 0}
          - {name: web, handler: "supervisor.handlers.http:make", port: 0}
        """,
    )
    with SupervisorProcess(config) as sp:
        metrics_port = int(sp.wait_for(METRICS_LINE)[1])
        sp.wait_for(r"supervisor ready: .* in 2 worker processes")
        ports = sp.ready()
        for name, request in (("echo", b"hi\n"), ("web", b"GET / HTTP/1.0\r\n\r\n")):
            with socket.create_connection(("127.0.0.1", ports[name]), timeout=10) as s:
                s.sendall(request)
                s.shutdown(socket.SHUT_WR)
                while s.recv(4096):
                    pass
        yield sp, metrics_port, ports


@pytest.mark.e2e
def test_every_metric_the_dashboard_names_is_in_a_real_scrape(
    supervised: tuple[SupervisorProcess, int, dict[str, int]],
) -> None:
    _, metrics_port, _ = supervised
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        samples = [s for f in text_string_to_metric_families(resp.read().decode()) for s in f.samples]
    exported = {s.name for s in samples}
    per_server = {s.name for s in samples if "server" in s.labels}
    exprs = expressions(load())
    used = {name for _, expr in exprs for name in metric_names(expr)}
    assert {"supervisor_server_up", "supervisor_connection_duration_seconds_bucket"} <= used
    assert used - exported - FROM_PROMETHEUS == set()
    for where, expr in expressions(load(), variables=False):  # a per-server series is filtered by $server
        for name in metric_names(expr) & per_server:
            selectors = re.findall(rf"(?<![\w:]){name}(\{{[^}}]*\}})?", expr)
            assert all('server=~"$server"' in s for s in selectors), (where, name)


def api(prom: Prometheus, path: str, **params: str) -> dict[str, Any]:
    """Prometheus' JSON answer, an error's included (HTTP 400/422 carry {"status": "error", ...})."""
    url = f"http://127.0.0.1:{prom.port}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read())
    return answer


@pytest.mark.e2e
def test_a_real_prometheus_on_the_scrape_config_answers_every_dashboard_expression(
    supervised: tuple[SupervisorProcess, int, dict[str, int]], tmp_path: Path
) -> None:
    _, metrics_port, ports = supervised
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="900ms", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    shutil.copy(SCRAPE_CONFIG.parent / "alerts.yml", workdir)
    prom = Prometheus(require_tool("prometheus"), workdir, metrics_port)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))  # in place of the one Prometheus() wrote
    values = {"job": job["job_name"], "instance": f"127.0.0.1:{metrics_port}", "server": "echo|web", **INTERVALS}
    dashboard = load()
    try:
        prom.start()
        prom.wait_for(f'count_over_time(up{{job="{job["job_name"]}"}}[1m]) >= 3')  # rate() needs two samples
        rules = api(prom, "/api/v1/rules")["data"]["groups"]
        alerts = yaml.safe_load((workdir / "alerts.yml").read_text())["groups"][0]["rules"]
        assert sum(len(g["rules"]) for g in rules) == len(alerts)  # rule_files resolved next to the config
        empty = []
        for where, expr in expressions(dashboard):
            answer = api(prom, "/api/v1/query", query=substitute(expr, values))
            assert answer["status"] == "success", f"{where}: {answer}\n{expr}"
            if not answer["data"]["result"] and not where.startswith("annotation"):  # annotations mark events
                empty.append(where)
        assert empty == [], f"no series for: {empty}"
        by_title = {p["title"]: p for p in panels(dashboard)}
        for title, expected in (("Servers up", [len(ports), len(ports)]), ("Ready", [1])):
            got = [
                float(api(prom, "/api/v1/query", query=substitute(t["expr"], values))["data"]["result"][0]["value"][1])
                for t in by_title[title]["targets"]
            ]
            assert got == expected, title
    finally:
        prom.stop()
