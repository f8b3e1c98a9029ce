#!/usr/bin/python3
"""test_prometheus.py — the monitoring deployment against a real Prometheus:
deploy/prometheus/{prometheus.yml,alerts.yml} and deploy/grafana/attnd.json.

    /usr/bin/python3 tests/server/test_prometheus.py --attnd build/attnd --attn build/attn [-k NAME] [-v] [--keep]

Without /usr/bin/prometheus (Debian package `prometheus`) it prints a skip
line and exits 0.

Test01Files, no server: `promtool check config` and `promtool check rules`
on the shipped files, `promtool test rules` on alerts_test.yml (the rules'
unit tests), the scrape job as documented, an alert for each concern (latency,
errors, saturation, down, not ready, training), and the dashboard's JSON model
(datasource variable, unique ids, grid, a query for each concern).

Test02RoundTrip: one attnd on an ephemeral port of 127.0.0.1 (a random `tiny`
model made by `attn random`), and Debian's prometheus on another
(--web.listen-address=127.0.0.1:PORT, a free port found by binding first;
--storage.tsdb.path in the temporary directory) with the shipped
prometheus.yml rewritten for the test: the attnd job scrapes the test's port
every second, rules (the shipped alerts.yml) are evaluated every second.
Once the target is up, the test sends traffic (POST /generate at several
prompt lengths, one 422, one /recall; more generations once those are
scraped, since a counter series' first value is invisible to rate()) and
reads it back through Prometheus'
HTTP API (/api/v1/query): attnd_requests_total{route="/generate"} as attnd
itself counts it, up == 1, rate(), increase() and histogram_quantile(),
every sample name attnd exports, every dashboard query (variables
substituted) evaluated without error and with data, the alert rules loaded
and healthy with nothing firing; finally attnd is stopped and Prometheus
must see up == 0 and put AttndDown in pending. Both processes are stopped
(SIGTERM, then SIGKILL after a timeout) and the directory removed.

Standard library plus python3-yaml (Debian), through harness.py. About 15 s.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import yaml  # noqa: E402

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
PROM_DIR = os.path.join(H.REPO, "deploy", "prometheus")
PROM_YML = os.path.join(PROM_DIR, "prometheus.yml")
ALERTS_YML = os.path.join(PROM_DIR, "alerts.yml")
ALERTS_TEST_YML = os.path.join(PROM_DIR, "alerts_test.yml")
DASHBOARD = os.path.join(H.REPO, "deploy", "grafana", "attnd.json")

# Families the deployment refers to that attnd may not export at scrape
# time: a dashboard query or alert on one of these may come back empty.
FUTURE = {
    "attnd_attention_cost_exponent": "the fitted cost exponent, issue #6",
    "attnd_train_loss": "a series per running training job, none when idle",
}

# Grafana's variables, as the round trip substitutes them.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "5s",
                "$job": "attnd", "$instance": ".*", "$phase": ".*"}

PROM_START_TIMEOUT = 30.0
ROUND_TRIP_TIMEOUT = 30.0

WORK = None
ATTND = None  # harness.Server
PROM = None   # Prometheus


def families_in(expr):
    """attnd_* metric names (sample names) an expression refers to."""
    return set(re.findall(r"\battnd_[a-z0-9_]+", expr))


def family_of(sample):
    for suf in ("_bucket", "_sum", "_count"):
        if sample.endswith(suf):
            return sample[: -len(suf)]
    return sample


def load_alert_rules():
    with open(ALERTS_YML, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    return [(g["name"], r) for g in doc["groups"] for r in g["rules"] if "alert" in r]


def load_dashboard():
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def dashboard_queries(dash):
    """[(panel title, refId, expr)] of every panel, rows' nested panels included."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p.get("title", "?"), t.get("refId", "?"), t.get("expr", "")))
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    return out


def substitute(expr):
    for k in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(k, GRAFANA_VARS[k]).replace("${%s}" % k[1:], GRAFANA_VARS[k])
    return expr


def promtool(*args, timeout=60):
    p = subprocess.run([PROMTOOL] + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout, cwd=H.REPO)
    return p.returncode, p.stdout.decode("utf-8", "replace")


# --------------------------------------------------------------------------
# Prometheus, the process


class Prometheus:
    """One prometheus process we started, on 127.0.0.1:port. Never touches
    any other process."""

    def __init__(self, workdir, config_path):
        self.workdir = workdir
        self.config = config_path
        self.proc = None
        self.port = None
        self.log_path = os.path.join(workdir, "prometheus.log")

    def start(self, timeout=PROM_START_TIMEOUT):
        last = None
        for _ in range(3):  # the free port may be taken between probe and bind
            self.port = H.free_port()
            self.log = open(self.log_path, "ab")
            cmd = [PROMETHEUS, "--config.file=" + self.config,
                   "--storage.tsdb.path=" + os.path.join(self.workdir, "tsdb"),
                   "--web.listen-address=127.0.0.1:%d" % self.port,
                   "--storage.tsdb.retention.time=1h", "--log.level=info"]
            self.cmd = cmd
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                         cwd=self.workdir, preexec_fn=H._die_with_parent)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port, timeout=2) as r:
                        if r.status == 200:
                            return self
                except (OSError, urllib.error.URLError) as e:
                    last = e
                time.sleep(0.1)
            rc = self.proc.poll()
            self.stop()
            if rc is None or "address already in use" not in self.log_tail():
                break
        raise H.StartupError("prometheus did not become ready on 127.0.0.1:%d (exit %s, last %r)\n"
                             "  command: %s\n%s" % (self.port, self.proc.returncode, last,
                                                    " ".join(self.cmd), self.log_tail()))

    def log_tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join("  | " + ln for ln in lines[-n:])

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after timeout. Returns (status, killed?)."""
        if self.proc is None:
            return None, False
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                killed = True
                self.proc.wait(timeout=5)
        try:
            self.log.close()
        except OSError:
            pass
        return self.proc.returncode, killed

    # ---- the HTTP API

    def api(self, path, **params):
        url = "http://127.0.0.1:%d%s" % (self.port, path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = r.read()
        except urllib.error.HTTPError as e:  # 400/422 carry the error as JSON
            body = e.read()
        doc = json.loads(body.decode("utf-8"))
        return doc

    def query(self, expr):
        """The result of an instant query; raises AssertionError on a
        PromQL error."""
        doc = self.api("/api/v1/query", query=expr)
        if doc.get("status") != "success":
            raise AssertionError("query %r: %s: %s" % (expr, doc.get("errorType"), doc.get("error")))
        return doc["data"]

    def vector(self, expr):
        """[(labels, float value)] of an instant vector query."""
        data = self.query(expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise AssertionError("query %r: %s, want a vector" % (expr, data["resultType"]))
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def wait_for(self, expr, pred, timeout=ROUND_TRIP_TIMEOUT, what=None):
        """Polls expr until pred(vector) holds; returns the vector, or fails
        with the last result."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = self.vector(expr)
            if pred(last):
                return last
            if time.monotonic() >= deadline:
                raise AssertionError("%s: not within %.0fs; last result of %r: %s"
                                     % (what or "condition", timeout, expr, last))
            time.sleep(0.25)


# --------------------------------------------------------------------------
# setup and teardown of the round trip


def _start_all():
    global WORK, ATTND, PROM
    WORK = H.Workdir(prefix="attnd-prom-")
    models = WORK.mkdir("models")
    H.make_model(os.path.join(models, "tiny.safetensors"), H.TINY, 1)
    ATTND = H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", models,
                      "--data-dir", WORK.sub("data"), "--threads", "2", "--grace-seconds", "3"],
                     name="attnd", workdir=WORK.path).start()

    # The shipped configuration, pointed at the test's attnd and sped up.
    with open(PROM_YML, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    cfg.setdefault("global", {}).update({"scrape_interval": "1s", "scrape_timeout": "1s",
                                         "evaluation_interval": "1s"})
    cfg["rule_files"] = [os.path.join(PROM_DIR, r) if not os.path.isabs(r) else r
                         for r in cfg.get("rule_files", [])]
    jobs = [j for j in cfg["scrape_configs"] if j.get("job_name") == "attnd"]
    if len(jobs) != 1:
        raise H.StartupError("prometheus.yml has %d scrape jobs named attnd, want 1" % len(jobs))
    jobs[0].update({"scrape_interval": "1s", "scrape_timeout": "1s",
                    "static_configs": [{"targets": ["127.0.0.1:%d" % ATTND.port]}]})
    cfg.pop("alerting", None)
    path = WORK.sub("prometheus.yml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    PROM = Prometheus(WORK.path, path).start()


def _cleanup():
    if PROM is not None:
        PROM.stop()
    if ATTND is not None:
        ATTND.stop(timeout=10)
    if WORK is not None:
        WORK.cleanup()


# ==========================================================================
# the files, checked by promtool and by reading them


class Test01Files(unittest.TestCase):
    maxDiff = 4000

    def test_promtool_check_config(self):
        rc, out = promtool("check", "config", PROM_YML)
        self.assertEqual(rc, 0, "promtool check config:\n" + out)
        self.assertIn("SUCCESS", out)
        self.assertRegex(out, r"[1-9]\d* rule files? found", "the config loads no rule file:\n" + out)

    def test_promtool_check_rules(self):
        rc, out = promtool("check", "rules", ALERTS_YML)
        self.assertEqual(rc, 0, "promtool check rules:\n" + out)
        self.assertIn("SUCCESS", out)

    def test_promtool_test_rules(self):
        if not os.path.exists(ALERTS_TEST_YML):
            self.skipTest("no %s" % ALERTS_TEST_YML)
        rc, out = promtool("test", "rules", ALERTS_TEST_YML)
        self.assertEqual(rc, 0, "promtool test rules:\n" + out)
        self.assertIn("SUCCESS", out)

    def test_scrape_job(self):
        with open(PROM_YML, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
        jobs = [j for j in cfg["scrape_configs"] if j.get("job_name") == "attnd"]
        self.assertEqual(len(jobs), 1, "one scrape job named attnd")
        job = jobs[0]
        self.assertEqual(job.get("metrics_path", "/metrics"), "/metrics")
        self.assertEqual(job.get("scrape_interval", cfg.get("global", {}).get("scrape_interval")), "5s")
        targets = [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
        self.assertEqual(targets, ["127.0.0.1:8080"], "attnd's default --host/--port")
        self.assertIn("alerts.yml", cfg.get("rule_files", []))

    def test_alerts_cover_each_concern(self):
        rules = load_alert_rules()
        exprs = {r["alert"]: r["expr"] for _, r in rules}
        self.assertEqual(len(exprs), len(rules), "alert names are unique")

        def some(pred, what):
            hits = [a for a, e in exprs.items() if pred(e)]
            self.assertTrue(hits, "no alert on %s among %s" % (what, sorted(exprs)))
        some(lambda e: "attnd_request_duration_seconds_bucket" in e and '"/generate"' in e
             and "histogram_quantile" in e, "/generate latency (a quantile of the histogram)")
        some(lambda e: "attnd_time_to_first_token_seconds_bucket" in e, "time to first token")
        some(lambda e: "attnd_requests_total" in e and "5.." in e, "the 5xx share")
        some(lambda e: "attnd_queue_depth" in e, "queue depth")
        some(lambda e: "attnd_requests_total" in e and "503" in e, "503s (queue full)")
        some(lambda e: re.search(r"\bup\b", e) is not None, "attnd down (up == 0)")
        some(lambda e: "attnd_ready" in e, "readiness")
        some(lambda e: "attnd_train_jobs" in e and "failed" in e, "training job failures")
        for name, r in rules:
            self.assertIn(r.get("labels", {}).get("severity"), ("critical", "warning", "info"),
                          "%s: severity label" % r["alert"])
            for k in ("summary", "description"):
                self.assertTrue(r.get("annotations", {}).get(k), "%s: annotation %s" % (r["alert"], k))

    def test_dashboard_model(self):
        dash = load_dashboard()
        self.assertIsInstance(dash.get("schemaVersion"), int)
        self.assertGreaterEqual(dash["schemaVersion"], 36)
        self.assertTrue(dash.get("uid") and dash.get("title"))
        tvars = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
        self.assertIn("DS_PROMETHEUS", tvars, "a datasource variable DS_PROMETHEUS")
        self.assertEqual((tvars["DS_PROMETHEUS"]["type"], tvars["DS_PROMETHEUS"]["query"]),
                         ("datasource", "prometheus"))
        ids, problems = set(), []

        def walk(panels):
            for p in panels:
                title = p.get("title", "?")
                if p.get("id") in ids:
                    problems.append("%s: duplicate id %s" % (title, p.get("id")))
                ids.add(p.get("id"))
                g = p.get("gridPos", {})
                if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
                    problems.append("%s: gridPos %s" % (title, g))
                if p.get("type") != "row":
                    if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
                        problems.append("%s: datasource %s" % (title, p.get("datasource")))
                    if not p.get("targets"):
                        problems.append("%s: no queries" % title)
                    for t in p.get("targets", []):
                        if t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
                            problems.append("%s/%s: datasource %s" % (title, t.get("refId"), t.get("datasource")))
                        if not t.get("expr"):
                            problems.append("%s/%s: no expr" % (title, t.get("refId")))
                walk(p.get("panels", []))
        walk(dash.get("panels", []))
        self.assertEqual(problems, [])
        exprs = [e for _, _, e in dashboard_queries(dash)]

        def some(pred, what):
            self.assertTrue(any(pred(e) for e in exprs), "no dashboard query for %s" % what)
        some(lambda e: "histogram_quantile(0.50" in e and "attnd_request_duration_seconds_bucket" in e
             and "route" in e, "p50 latency by route")
        some(lambda e: "histogram_quantile(0.99" in e and "attnd_request_duration_seconds_bucket" in e
             and "route" in e, "p99 latency by route")
        some(lambda e: "rate(attnd_requests_total" in e and "by (route)" in e, "request rate by route")
        some(lambda e: "attnd_time_to_first_token_seconds_bucket" in e, "time to first token")
        some(lambda e: "attnd_time_per_output_token_seconds_bucket" in e, "time per output token")
        some(lambda e: "rate(attnd_completion_tokens_total" in e, "throughput (completion tokens/s)")
        some(lambda e: "attnd_queue_depth" in e, "queue depth")
        some(lambda e: "attnd_requests_in_flight" in e, "in flight")
        some(lambda e: "attnd_decode_batch_size" in e, "decode batch size")
        some(lambda e: "attnd_op_seconds_total" in e and "by (class)" in e and "group_left" not in e,
             "op-class time as a rate")
        some(lambda e: "attnd_op_seconds_total" in e and "by (class)" in e and "group_left" in e,
             "op-class share")
        some(lambda e: "attnd_component_seconds_total" in e and "by (component)" in e, "attention vs MLP")
        some(lambda e: "attnd_attention_seconds_total" in e and "attnd_attention_calls_total" in e
             and "by (context_max)" in e, "attention seconds per call by context length")


# ==========================================================================
# attnd -> Prometheus -> the HTTP query API


class Test02RoundTrip(unittest.TestCase):
    maxDiff = 4000
    error = None
    sent = None  # attnd's own count of 200s on /generate after the traffic

    @classmethod
    def setUpClass(cls):
        try:
            _start_all()
        except Exception as e:  # noqa: BLE001 - every test reports it
            cls.error = str(e)
            sys.stdout.write("\n*** setting up attnd + prometheus failed ***\n%s\n" % cls.error)
            sys.stdout.flush()

    def setUp(self):
        if self.error:
            self.fail("attnd + prometheus not running: " + self.error.splitlines()[0])

    def wait_up(self):
        return PROM.wait_for('up{job="attnd"}', lambda v: v and v[0][1] == 1.0,
                             what="up{job=\"attnd\"} == 1")

    def send_traffic(self):
        """Once per run, in two rounds: generations at several prompt
        lengths (context buckets 64, 128, 256), a 422 and a recall; then,
        once Prometheus has scraped those, three more generations. attnd
        creates a (route, code) series at its first request, so a series'
        first scraped value is already non-zero and rate() cannot see the
        first round; the second round is what rate() and the quantiles
        measure. Returns attnd's own count of /generate 200s afterwards."""
        cls = type(self)
        if cls.sent is not None:
            return cls.sent
        self.wait_up()
        for n in (8, 40, 100, 180, 30):
            r = ATTND.generate({"prompt": "x" * n, "max_tokens": 16, "temperature": 0})
            self.assertEqual(r.status, 200, "POST /generate: %r" % r)
        r = ATTND.generate({"prompt": "x", "max_tokens": 0})
        self.assertEqual(r.status, 422, "POST /generate max_tokens 0: %r" % r)
        r = ATTND.post("/recall", H.load_example("recall-lecture.json"))
        self.assertEqual(r.status, 200, "POST /recall: %r" % r)
        PROM.wait_for('attnd_requests_total{job="attnd", route="/generate", code="200"}',
                      lambda v: v and v[0][1] == 5.0, what="the first round scraped")
        for n in (20, 120, 60):
            r = ATTND.generate({"prompt": "y" * n, "max_tokens": 16, "temperature": 0})
            self.assertEqual(r.status, 200, "POST /generate: %r" % r)
        fams, _, _ = ATTND.metrics()
        cls.sent = H.sample_value(fams, "attnd_requests_total", route="/generate", code="200")
        self.assertEqual(cls.sent, 8.0)
        return cls.sent

    def test_01_target_up(self):
        self.wait_up()
        doc = PROM.api("/api/v1/targets", state="active")
        ts = [t for t in doc["data"]["activeTargets"] if t["labels"].get("job") == "attnd"]
        self.assertEqual(len(ts), 1, "active targets of job attnd: %s" % ts)
        t = ts[0]
        self.assertEqual(t["scrapeUrl"], "http://127.0.0.1:%d/metrics" % ATTND.port)
        self.assertEqual((t["health"], t["lastError"]), ("up", ""), "target %s" % t)

    def test_02_requests_read_back(self):
        sent = self.send_traffic()
        expr = 'attnd_requests_total{job="attnd", route="/generate"}'
        v = PROM.wait_for(expr, lambda v: any(m.get("code") == "200" and x == sent for m, x in v),
                          what="Prometheus reading attnd_requests_total{route=\"/generate\",code=\"200\"} == %g" % sent)
        codes = {m["code"]: x for m, x in v}
        self.assertEqual(codes.get("422"), 1.0, "the 422 sent: %s" % v)
        for m, _ in v:
            self.assertEqual((m.get("job"), m.get("instance"), m.get("route")),
                             ("attnd", "127.0.0.1:%d" % ATTND.port, "/generate"))
        # the plain query the brief names: a non-empty vector with the route
        v = PROM.vector("attnd_requests_total")
        self.assertTrue(any(m.get("route") == "/generate" for m, _ in v), "attnd_requests_total: %s" % v)

    def test_03_up_is_one(self):
        v = PROM.vector('up{job="attnd"}')
        self.assertEqual([x for _, x in v], [1.0], 'up{job="attnd"}: %s' % v)

    def test_04_rate_increase_quantile(self):
        self.send_traffic()
        rate = PROM.wait_for('sum(rate(attnd_requests_total{job="attnd", route="/generate"}[1m]))',
                             lambda v: v and v[0][1] > 0, what="rate() > 0")
        self.assertGreater(rate[0][1], 0)
        tokens = PROM.wait_for('sum(increase(attnd_completion_tokens_total{job="attnd"}[1m]))',
                               lambda v: v and v[0][1] > 0, what="increase(completion tokens) > 0")
        self.assertGreater(tokens[0][1], 0)
        q = PROM.vector('histogram_quantile(0.99, sum by (le) ('
                        'rate(attnd_request_duration_seconds_bucket{job="attnd", route="/generate"}[1m])))')
        self.assertEqual(len(q), 1, "p99: %s" % q)
        self.assertTrue(math.isfinite(q[0][1]) and 0 < q[0][1] < 150, "p99 of /generate: %s" % q)
        # prefill attention lands in the buckets of the prompts sent
        calls = PROM.wait_for('sum by (context_max) (attnd_attention_calls_total{job="attnd", phase="prefill"}) > 0',
                              lambda v: len(v) >= 2, what="prefill attention calls in two buckets or more")
        self.assertTrue(all(int(m["context_max"]) <= 256 for m, _ in calls), calls)

    def test_05_every_sample_name_scraped(self):
        self.send_traffic()
        _, text, _ = ATTND.metrics()
        own = set(re.findall(r"^(attnd_[a-z0-9_]+)", text, re.M))
        v = PROM.wait_for('count by (__name__) ({job="attnd", __name__=~"attnd_.+"})',
                          lambda v: {m["__name__"] for m, _ in v} >= own,
                          what="every attnd_ sample name in Prometheus")
        self.assertEqual({m["__name__"] for m, _ in v}, own)

    def test_06_names_used_by_the_deployment_exist(self):
        """A typo in a family name would make a panel or alert silently
        empty: every attnd_ name in alerts.yml and attnd.json must be one
        attnd exports (or a FUTURE one)."""
        _, text, _ = ATTND.metrics()
        own = set(re.findall(r"^(attnd_[a-z0-9_]+)", text, re.M))
        used = set()
        for _, r in load_alert_rules():
            used |= families_in(r["expr"])
        for _, _, e in dashboard_queries(load_dashboard()):
            used |= families_in(e)
        unknown = sorted(n for n in used if n not in own and family_of(n) not in FUTURE)
        self.assertEqual(unknown, [], "names attnd does not export (exports: %s)" % sorted(own))

    def test_07_dashboard_queries_evaluate(self):
        self.send_traffic()
        # once a scrape after the traffic is in, every rate has a window
        PROM.wait_for('sum(increase(attnd_completion_tokens_total{job="attnd"}[1m]))',
                      lambda v: v and v[0][1] > 0, what="the traffic scraped")
        errors, empty = [], []
        queries = dashboard_queries(load_dashboard())
        self.assertGreater(len(queries), 10)
        for title, ref, expr in queries:
            q = substitute(expr)
            if "$" in q:
                errors.append("%s/%s: unsubstituted variable in %r" % (title, ref, q))
                continue
            try:
                v = PROM.vector(q)
            except AssertionError as e:
                errors.append("%s/%s: %s" % (title, ref, e))
                continue
            if not v and not any(family_of(n) in FUTURE for n in families_in(q)):
                empty.append("%s/%s: %s" % (title, ref, q))
        self.assertEqual(errors, [], "dashboard queries Prometheus rejects")
        self.assertEqual(empty, [], "dashboard queries with no data after traffic")

    def test_08_alert_rules_loaded_healthy_silent(self):
        want = {}
        for group, r in load_alert_rules():
            want.setdefault(group, set()).add(r["alert"])
        deadline = time.monotonic() + ROUND_TRIP_TIMEOUT
        while True:
            doc = PROM.api("/api/v1/rules", type="alert")
            got = {g["name"]: {r["name"]: r for r in g["rules"]} for g in doc["data"]["groups"]}
            evaluated = all(r.get("lastEvaluation", "").startswith("0001") is False and r.get("health") != "unknown"
                            for rs in got.values() for r in rs.values())
            if evaluated or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        self.assertEqual({g: set(rs) for g, rs in got.items()}, want, "alert groups loaded")
        bad = ["%s: health %s %s" % (n, r.get("health"), r.get("lastError", ""))
               for rs in got.values() for n, r in rs.items() if r.get("health") != "ok"]
        self.assertEqual(bad, [], "rules that do not evaluate")
        alerts = PROM.api("/api/v1/alerts")["data"]["alerts"]
        self.assertEqual(alerts, [], "alerts active against a healthy attnd")

    def test_09_down_is_seen(self):
        """Last: attnd stops; Prometheus sees up == 0 and AttndDown goes
        pending (it fires after its `for`)."""
        self.wait_up()
        rc, _, killed = ATTND.stop(timeout=10)
        self.assertFalse(killed, "attnd ignored SIGTERM")
        self.assertEqual(rc, 0, "attnd's exit status on SIGTERM")
        PROM.wait_for('up{job="attnd"}', lambda v: v and v[0][1] == 0.0, timeout=15,
                      what='up{job="attnd"} == 0 after attnd stopped')
        deadline = time.monotonic() + 15
        while True:
            alerts = PROM.api("/api/v1/alerts")["data"]["alerts"]
            down = [a for a in alerts if a["labels"].get("alertname") == "AttndDown"]
            if down or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        self.assertEqual([(a["labels"].get("instance"), a["state"]) for a in down],
                         [("127.0.0.1:%d" % ATTND.port, "pending")], "AttndDown: %s" % alerts)


class Test99Stop(unittest.TestCase):
    def test_prometheus_stops_on_sigterm(self):
        if PROM is None or not PROM.alive():
            self.skipTest("prometheus is not running")
        rc, killed = PROM.stop(timeout=10)
        self.assertFalse(killed, "prometheus ignored SIGTERM\n" + PROM.log_tail())
        self.assertEqual(rc, 0, "prometheus' exit status on SIGTERM\n" + PROM.log_tail())


if __name__ == "__main__":
    if not os.path.exists(PROMETHEUS) or not os.path.exists(PROMTOOL):
        print("skipped: %s or %s not found (Debian package prometheus; scripts/install-deps.sh installs it)"
              % (PROMETHEUS, PROMTOOL))
        print("0 passed, 0 failed")
        sys.exit(0)
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0], cleanup=_cleanup)
