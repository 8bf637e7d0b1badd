"""Shared pieces of the external serving tests: a real `switchyard serve` process on a free
loopback port, `switchyard generate --json` as the reference answer, and a tiny test runner
(no pytest needed) that prints "N passed, N failed" and exits non-zero on any failure.

Every script takes --bin (the switchyard binary; default $SWITCHYARD_BIN, else
target/release/switchyard) and --model (default: the model `serve` runs with no --model).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL = os.path.join(REPO, "models", "shakespeare-moe")


def parse_args(description, extra=None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bin", default=os.environ.get("SWITCHYARD_BIN", os.path.join(REPO, "target", "release", "switchyard")))
    p.add_argument("--model", default=DEFAULT_MODEL)
    if extra:
        extra(p)
    return p.parse_args()


class Server:
    """`switchyard serve --port 0` as a child process; the port is read from its banner."""

    def __init__(self, binary, model, *flags, startup_timeout=60.0):
        self.binary, self.model, self.flags = binary, model, list(flags)
        self.startup_timeout = startup_timeout
        self.proc = None
        self.base = None
        self.log = []

    def __enter__(self):
        cmd = [self.binary, "serve", "--model", self.model, "--host", "127.0.0.1", "--port", "0", *self.flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        found = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.log.append(line)
                m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
                if m and not found.is_set():
                    self.base = m.group(1)
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(self.startup_timeout):
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            try:
                if get_json(self.base + "/health")["status"] == "ok":
                    return self
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("server never became healthy:\n" + "".join(self.log))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def v1(self):
        return self.base + "/v1"


def get_text(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def get_json(url, timeout=30):
    return json.loads(get_text(url, timeout))


def post_json(url, body, timeout=120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def generate(binary, model, prompt=None, tokens=None, max_tokens=16):
    """Greedy answer of `switchyard generate --json` (one sequence, no batching)."""
    cmd = [binary, "generate", "--model", model, "--max-tokens", str(max_tokens), "--temperature", "0", "--json"]
    if tokens is not None:
        cmd += ["--tokens", ",".join(map(str, tokens))]
    else:
        cmd += ["--prompt", prompt]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def metric(text, name_and_labels):
    """Value of the line `name{labels} value` in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name_and_labels + " "):
            return float(line.split()[-1])
    return 0.0


def metric_lines(text, name):
    """{labels: value} of every sample of metric `name`."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            out[key[len(name):]] = float(value)
    return out


def wait_idle(base, timeout=30.0):
    """Waits until /metrics shows no running or waiting request and no KV block used."""
    deadline = time.time() + timeout
    while True:
        m = get_text(base + "/metrics")
        used = metric(m, "switchyard_kv_blocks_used")
        busy = metric(m, "switchyard_requests_running") + metric(m, "switchyard_requests_waiting")
        if used == 0 and busy == 0:
            return m
        if time.time() > deadline:
            raise AssertionError(f"not idle after {timeout}s: kv_blocks_used={used}, running+waiting={busy}")
        time.sleep(0.05)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def run_tests(tests):
    """Runs (name, fn) pairs; prints each result and 'N passed, N failed'; returns the exit code."""
    passed = failed = 0
    for name, fn in tests:
        start = time.time()
        try:
            fn()
        except Exception:  # noqa: BLE001 - every failure is reported, then the next test runs
            failed += 1
            print(f"FAIL {name} ({time.time() - start:.2f}s)")
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print(f"ok   {name} ({time.time() - start:.2f}s)")
        sys.stdout.flush()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


def tests_of(module_globals):
    """The module's test_* functions in definition order."""
    return [(n, f) for n, f in module_globals.items() if n.startswith("test_") and callable(f)]
