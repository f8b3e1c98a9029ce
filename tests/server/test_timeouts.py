#!/usr/bin/python3
"""test_timeouts.py — request deadlines (timeout_ms, --request-timeout-seconds)
and fair admission among clients, on the real attnd.

    /usr/bin/python3 tests/server/test_timeouts.py --attnd build/attnd --attn build/attn [-k NAME] [-v]

Servers (each started on first use, on an ephemeral port of 127.0.0.1, with
a random 4-layer model whose 4096-token context makes a long generation
take seconds):
  one    --max-batch 1: one sequence at a time, so a second request queues.
  capped --request-timeout-seconds 1: every request ends within about 1 s.
  fair   --max-batch 2: two clients, told apart by their source address
         (127.0.0.1 and 127.0.0.2; Linux lets a socket bind any 127/8
         address), one of which floods the queue.

What is checked: a long generation past its deadline ends with
finish_reason "timeout", fewer tokens than max_tokens, its slot freed
(attnd_sequences_running and attnd_requests_in_flight back to 0); a request
still queued, or still in prefill, gets 504 "timeout", streams too; the
cap clamps a larger timeout_ms; /recall past its deadline (while it waits
for the one worker, or while it runs) is a 504; timeout_ms validation; the
timeouts are counted in attnd_requests_total{code="504"}; and a second
client's request is served before most of a first client's flood.
"""

import http.client
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

WORK = None
LONG = {"prompt": "a", "max_tokens": 4096, "ignore_eos": True, "temperature": 0}


def _workdir():
    global WORK
    if WORK is None:
        WORK = H.Workdir(prefix="attnd-timeouts-")
        models = WORK.mkdir("models")
        H.make_model(os.path.join(models, "slow4k.safetensors"), H.SLOW, 3)
    return WORK


def _factory(name, extra):
    def start():
        w = _workdir()
        srv = H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", w.sub("models"),
                        "--data-dir", w.sub("data-" + name), "--threads", "1", "--grace-seconds", "3",
                        "--quiet"] + extra, name="attnd-" + name, workdir=w.path)
        return srv.start()
    return start


ONE = H.LazyServer(_factory("one", ["--max-batch", "1"]))
CAPPED = H.LazyServer(_factory("capped", ["--max-batch", "2", "--request-timeout-seconds", "1"]))
FAIR = H.LazyServer(_factory("fair", ["--max-batch", "2"]))
SERVERS = (ONE, CAPPED, FAIR)


def _cleanup():
    for lazy in SERVERS:
        if lazy.server is not None:
            lazy.server.stop(timeout=10)
    if WORK is not None:
        WORK.cleanup()


def post_from(srv, source, path, body, timeout=60):
    """POST from a given source address (a client of its own)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout, source_address=(source, 0))
    try:
        return srv.request("POST", path, body, conn=conn, timeout=timeout)
    finally:
        conn.close()


class Base(H.ServerTest):
    lazy = ONE

    @property
    def srv(self):
        return self.lazy.get()

    def gauges(self):
        fams, _, _ = self.srv.metrics()
        return (H.sample_value(fams, "attnd_sequences_running"), H.sample_value(fams, "attnd_queue_depth"),
                H.sample_value(fams, "attnd_requests_in_flight"))

    def wait_gauges(self, want, timeout=10.0):
        """Waits until (running, queued, in flight) == want; returns the last."""
        deadline = time.monotonic() + timeout
        while True:
            g = self.gauges()
            if g == want or time.monotonic() > deadline:
                return g
            time.sleep(0.05)

    def wait_running(self, n, queued=None, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running, q, _ = self.gauges()
            if running >= n and (queued is None or q >= queued):
                return True
            time.sleep(0.01)
        return False

    def count_504(self, path):
        fams, _, _ = self.srv.metrics()
        return H.sample_value(fams, "attnd_requests_total", route=path, code="504")

    def in_background(self, fn):
        out = {}

        def run():
            try:
                out["r"] = fn()
            except BaseException as e:  # noqa: BLE001 - reported by the test
                out["e"] = e
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t, out


# --------------------------------------------------------------------------


class Test01Validation(Base):
    """timeout_ms must be an integer >= 1, on both routes (422 naming it)."""

    BAD = [0, -1, 2.5, 1.0, "100", True, None, [], {}]

    def test_generate_bad_timeout_ms(self):
        for v in self.BAD:
            r = self.srv.generate({"prompt": "a", "max_tokens": 1, "timeout_ms": v})
            err = self.assertError(r, 422, "invalid_argument", field="timeout_ms")
            self.assertIn("timeout_ms", err["message"], "timeout_ms %r: %s" % (v, err))

    def test_recall_bad_timeout_ms(self):
        for v in self.BAD:
            r = self.srv.post("/recall", {"pairs": [["a", 1]], "query": "a", "timeout_ms": v})
            self.assertError(r, 422, "invalid_argument", path="/recall", field="timeout_ms")

    def test_good_timeout_ms_is_accepted(self):
        obj = self.gen_ok({"prompt": "a", "max_tokens": 2, "temperature": 0, "timeout_ms": 60000})
        self.assertNotEqual(obj["finish_reason"], "timeout")
        # larger than the cap (and than int64): clamped, not refused
        r = self.srv.request("POST", "/generate", b'{"prompt": "a", "max_tokens": 2, "timeout_ms": 1'
                             + b"0" * 30 + b"}", headers={"Content-Type": "application/json"})
        self.assertAnswer(r, 200, "POST", "/generate")
        r = self.srv.post("/recall", {"pairs": [["a", 1]], "query": "a", "timeout_ms": 10 ** 15})
        obj = self.assertAnswer(r, 200, "POST", "/recall")
        self.assertEqual(obj["answers"][0]["value"], 1)


class Test02Generate(Base):
    """--max-batch 1: deadlines of running, prefilling and queued generations."""

    def test_long_generation_times_out_with_its_tokens(self):
        before = self.count_504("/generate")
        t0 = time.monotonic()
        obj = self.gen_ok(dict(LONG, timeout_ms=400))
        took = time.monotonic() - t0
        self.assertEqual(obj["finish_reason"], "timeout", obj["usage"])
        self.assertGreater(len(obj["tokens"]), 0)
        self.assertLess(len(obj["tokens"]), 4096, "the whole generation ran despite timeout_ms 400")
        self.assertEqual(obj["usage"]["completion_tokens"], len(obj["tokens"]))
        self.assertGreaterEqual(took, 0.35, "ended before its deadline")
        self.assertLess(took, 2.5, "timeout_ms 400 took %.2fs" % took)
        # the slot is free at once: nothing running, nothing in flight
        self.assertEqual(self.wait_gauges((0, 0, 0)), (0, 0, 0))
        self.assertEqual(self.count_504("/generate"), before, "a timeout with tokens is a 200")
        # and the next request is served as usual
        self.assertEqual(self.gen_ok({"prompt": "b", "max_tokens": 3, "ignore_eos": True})["usage"]
                         ["completion_tokens"], 3)

    def test_queued_request_gets_504(self):
        before = self.count_504("/generate")
        t, out = self.in_background(lambda: self.srv.generate(dict(LONG, timeout_ms=1500)))
        self.assertTrue(self.wait_running(1), "the long generation never ran")
        r = self.srv.generate({"prompt": "b", "max_tokens": 5, "timeout_ms": 300})
        err = self.assertError(r, 504, "timeout", field=None)
        self.assertIn("queued", err["message"])
        self.assertLess(r.elapsed, 1.2, "the 504 came %.2fs after the request, deadline 0.3s" % r.elapsed)
        self.assertGreater(r.elapsed, 0.25)
        t.join(30)
        self.assertEqual(out["r"].json()["finish_reason"], "timeout")
        self.assertEqual(self.count_504("/generate"), before + 1)
        self.assertEqual(self.wait_gauges((0, 0, 0)), (0, 0, 0))

    def test_queued_stream_gets_504_not_a_stream(self):
        t, out = self.in_background(lambda: self.srv.generate(dict(LONG, timeout_ms=1200)))
        self.assertTrue(self.wait_running(1), "the long generation never ran")
        r = self.srv.generate({"prompt": "b", "max_tokens": 5, "stream": True, "timeout_ms": 200})
        self.assertError(r, 504, "timeout", field=None)
        t.join(30)
        self.assertEqual(self.wait_gauges((0, 0, 0)), (0, 0, 0))

    def test_prefill_past_the_deadline_gets_504(self):
        # a 4000-token prompt takes ~0.5 s to prefill on this model; the
        # deadline is checked between its 256-row chunks
        self.assertEqual(self.wait_gauges((0, 0, 0)), (0, 0, 0))
        r = self.srv.generate({"prompt": "x" * 4000, "max_tokens": 5, "timeout_ms": 120})
        if r.status == 200 and r.json()["timings"]["prefill_ms"] < 120:
            self.skipTest("a fast machine: the prefill of 4000 tokens took under 120 ms: %s"
                          % r.json()["timings"])
        err = self.assertError(r, 504, "timeout", field=None)
        self.assertIn("prefilling", err["message"])
        self.assertEqual(self.wait_gauges((0, 0, 0)), (0, 0, 0))

    def test_stream_times_out_with_a_final_event(self):
        r, tokens, final = self.stream(dict(LONG, timeout_ms=400))
        self.assertEqual(final["finish_reason"], "timeout")
        self.assertGreater(len(tokens), 0)
        self.assertLess(len(tokens), 4096)
        self.assertEqual(final["usage"]["completion_tokens"], len(tokens))
        self.assertEqual(self.wait_gauges((0, 0, 0)), (0, 0, 0))


class Test03Cap(Base):
    """--request-timeout-seconds 1 caps timeout_ms and is the default."""
    lazy = CAPPED

    def test_cap_clamps_a_larger_timeout(self):
        for body in (dict(LONG, timeout_ms=100000), dict(LONG)):
            t0 = time.monotonic()
            obj = self.gen_ok(body)
            took = time.monotonic() - t0
            self.assertEqual(obj["finish_reason"], "timeout", "%s: %s" % (body, obj["usage"]))
            self.assertLess(len(obj["tokens"]), 4096)
            self.assertGreater(took, 0.9, "%s ended after %.2fs" % (body.get("timeout_ms"), took))
            self.assertLess(took, 3.0, "%s ended after %.2fs, cap 1 s" % (body.get("timeout_ms"), took))
        self.assertEqual(self.wait_gauges((0, 0, 0)), (0, 0, 0))


class Test04Recall(Base):
    """/recall past its deadline: while it waits for the one libuv worker,
    and while engine exact runs (checked between blocks of queries)."""

    def big(self, seed):
        rnd = random.Random(seed)
        pairs = [["k%d" % i, "v%d" % i] for i in range(4096)]
        return {"pairs": pairs, "queries": ["k%d" % rnd.randrange(4096) for _ in range(1024)]}

    def test_running_exact_recall_stops_at_its_deadline(self):
        before = self.count_504("/recall")
        r = self.srv.post("/recall", dict(self.big(1), timeout_ms=50))
        self.assertError(r, 504, "timeout", path="/recall", field=None)
        self.assertLess(r.elapsed, 0.6, "a 50 ms deadline answered after %.2fs" % r.elapsed)
        self.assertEqual(self.count_504("/recall"), before + 1)

    def test_queued_recall_is_dropped(self):
        # the whole 4096 x 1024 recall takes about a second on the one worker
        t, out = self.in_background(lambda: self.srv.post("/recall", self.big(2)))
        time.sleep(0.15)
        r = self.srv.post("/recall", {"pairs": [["a", 1]], "query": "a", "timeout_ms": 100})
        t.join(60)
        big = out.get("r")
        self.assertIsNotNone(big, out.get("e"))
        obj = self.assertAnswer(big, 200, "POST", "/recall")
        if obj["timings"]["total_ms"] < 300:
            self.skipTest("the big recall took %.0f ms: too fast to hold the worker" % obj["timings"]["total_ms"])
        err = self.assertError(r, 504, "timeout", path="/recall", field=None)
        self.assertIn("waited", err["message"])
        # answered at its deadline (the watch timer's 100 ms), not when the worker got to it
        self.assertLess(r.elapsed, 0.1 + 0.6, "a queued recall's 504 came after %.2f s" % r.elapsed)
        # the worker is free again
        r = self.srv.post("/recall", {"pairs": [["a", 1]], "query": "a", "timeout_ms": 1000})
        self.assertEqual(self.assertAnswer(r, 200, "POST", "/recall")["answers"][0]["value"], 1)


class Test05Fairness(Base):
    """--max-batch 2: client A posts 10 long generations, then client B one
    short one. FIFO would serve B after 8 of A's; fair admission gives B
    the first slot that frees."""
    lazy = FAIR

    def test_second_client_is_not_stuck_behind_a_flood(self):
        srv = self.srv
        n_a = 10
        done = []  # (who, time) in order of completion
        lock = threading.Lock()

        def job(who, source, body):
            r = post_from(srv, source, "/generate", body, timeout=240)  # TSan is ~10x slower
            with lock:
                done.append((who, time.monotonic(), r.status))
            return r

        a_body = {"prompt": "a", "max_tokens": 400, "ignore_eos": True, "temperature": 0}
        threads = [threading.Thread(target=job, args=("A%d" % i, "127.0.0.1", a_body), daemon=True)
                   for i in range(n_a)]
        for t in threads:
            t.start()
        self.assertTrue(self.wait_running(2, queued=n_a - 2), "A's flood did not fill the slots and queue: %s"
                        % (self.gauges(),))
        t0 = time.monotonic()
        b = threading.Thread(target=job, args=("B", "127.0.0.2", {"prompt": "b", "max_tokens": 10,
                                                                  "ignore_eos": True, "temperature": 0}),
                             daemon=True)
        b.start()
        for t in threads + [b]:
            t.join(240)
        order = [w for w, _, _ in done]
        self.assertEqual(sorted(s for _, _, s in done), [200] * (n_a + 1), done)
        a_before_b = order.index("B")
        sys.stdout.write("\n  fairness: %d of A's %d finished before B; B took %.2fs; order %s\n"
                         % (a_before_b, n_a, [t for w, t, _ in done if w == "B"][0] - t0, order))
        # B is admitted at the first slot that frees (after 1 or 2 of A's,
        # as the two running ones end together); FIFO would make it 8
        self.assertLessEqual(a_before_b, 4, "B finished after %d of A's %d: %s" % (a_before_b, n_a, order))


# --------------------------------------------------------------------------


class Test98Contract(H.ContractTest):
    pass


class Test99Shutdown(H.ShutdownTest):
    servers = SERVERS
    names = "one, capped, fair"


if __name__ == "__main__":
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0], cleanup=_cleanup)
