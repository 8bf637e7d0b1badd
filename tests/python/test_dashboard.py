"""The operators' page in headless Chromium against a real `switchyard serve` after some traffic:
the per-layer heatmap, per-rank load and imbalance are rendered with the server's numbers
(asserted on the DOM Chromium dumps), and a screenshot is kept as a test artifact.

    python3 tests/python/test_dashboard.py [--bin ...] [--model DIR] [--chromium chromium]
        [--artifacts target/artifacts] [--layout-flags "--ep 2"]
"""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, Server, check, eq, get_json, parse_args, post_json, run_tests, tests_of, wait_idle  # noqa: E402


def extra(p):
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    p.add_argument("--artifacts", default=os.path.join(REPO, "target", "artifacts"))
    p.add_argument("--layout-flags", default="--ep 2", help="serve flags of a multi-rank layout for the second page")


ARGS = parse_args(__doc__, extra)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--virtual-time-budget=5000", "--window-size=1100,820", "--hide-scrollbars"]


def chromium(url, *what):
    with tempfile.TemporaryDirectory(prefix="switchyard-chromium-") as profile:
        cmd = [ARGS.chromium, *FLAGS, f"--user-data-dir={profile}", *what, url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited with {out.returncode}:\n{out.stderr[-2000:]}")
        return out.stdout


class Dom(HTMLParser):
    """Elements as (tag, attrs, text) with the text of their direct children's text nodes."""

    def __init__(self):
        super().__init__()
        self.elements, self.stack = [], []

    def handle_starttag(self, tag, attrs):
        e = [tag, dict(attrs), ""]
        self.elements.append(e)
        if tag not in ("meta", "input", "br", "img", "link"):
            self.stack.append(e)

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        for e in self.stack:
            e[2] += data

    def select(self, tag, cls=None):
        return [e for e in self.elements if e[0] == tag and (cls is None or cls in e[1].get("class", "").split())]

    def by_id(self, id_):
        return next(e for e in self.elements if e[1].get("id") == id_)


def traffic(s):
    for p in ["The king is dead", "Friends, Romans, countrymen", "Now is the winter of our discontent", "O Romeo"]:
        post_json(s.v1 + "/completions", {"prompt": p, "max_tokens": 24, "temperature": 0, "n": 2})
    post_json(s.v1 + "/chat/completions", {"messages": [{"role": "user", "content": "Speak!"}], "max_tokens": 16})
    wait_idle(s.base)


def check_page(s, shot_name):
    traffic(s)
    dom = Dom()
    dom.feed(chromium(s.base + "/", "--dump-dom"))
    api = get_json(s.base + "/api/expert-load")
    load = api["load"]
    body = dom.select("body")[0]
    eq(body[1].get("data-loaded"), "1", "the page loaded /api/expert-load")
    status = dom.by_id("status")[2]
    check(api["model"] in status and "cannot reach" not in status, f"status line names the model: {status!r}")
    check("KV blocks" in status and f"/ {api['kv_blocks_total']:,}" in status, f"status shows the KV pool: {status!r}")
    check(f"KV cached {api['kv_blocks_cached']:,}" in status, f"status shows the cached blocks: {status!r}")

    # Heatmap: one cell per (MoE layer, expert) with the server's token counts.
    rows = load["recent"] if any(any(r) for r in load["recent"]) else load["total"]
    cells = dom.select("td", "cell")
    eq(len(cells), sum(map(len, rows)), "heatmap cells")
    got = {}
    for _, a, text in cells:
        n = int(a["data-tokens"])
        eq(int(text.replace(",", "")), n, "a cell shows its count")
        got.setdefault(int(a["data-layer"]), []).append(n)
    eq(got, dict(zip(load["layers"], rows)), "heatmap counts per layer (page vs /api/expert-load)")
    check(all(sum(r) > 0 for r in rows), "every MoE layer routed tokens")
    eq(len(dom.select("td", "hot")), len(rows), "one hottest expert outlined per layer")
    skews = [float(a["data-value"]) for _, a, _ in dom.select("td", "skew")]
    eq(len(skews), len(rows), "an expert max/mean per layer")
    check(all(v >= 1.0 for v in skews) and max(skews) > 1.0, f"expert skew numbers: {skews}")

    # Per-rank load and per-layer imbalance.
    rank_rows = load["rank_recent"] if rows is load["recent"] else load["rank_total"]
    ranks = dom.select("div", "rank")
    eq(len(ranks), max(map(len, rank_rows)), "rank rows")
    eq([int(a["data-tokens"]) for _, a, _ in ranks], [sum(r[k] for r in rank_rows) for k in range(len(ranks))], "tokens per rank")
    check(all(int(a["data-tokens"]) > 0 for _, a, _ in ranks), "every rank computed tokens")
    imb = dom.select("div", "imbalance")
    eq(len(imb), len(load["layers"]), "imbalance rows")
    eq([round(float(a["data-value"]), 3) for _, a, _ in imb], [round(v, 3) for v in load["imbalance"]], "imbalance values")
    check(all(float(a["data-value"]) >= 1.0 for _, a, _ in imb), "imbalance >= 1")

    os.makedirs(ARGS.artifacts, exist_ok=True)
    shot = os.path.join(ARGS.artifacts, shot_name)
    if os.path.exists(shot):
        os.remove(shot)
    chromium(s.base + "/dashboard", f"--screenshot={shot}")
    check(os.path.getsize(shot) > 10_000, f"screenshot {shot}")
    print(f"  screenshot: {shot}")
    return len(ranks)


def test_dashboard_on_one_rank():
    with Server(ARGS.bin, ARGS.model) as s:
        eq(check_page(s, "dashboard.png"), 1, "ranks")


def test_dashboard_on_an_expert_parallel_layout():
    flags = shlex.split(ARGS.layout_flags)
    with Server(ARGS.bin, ARGS.model, *flags) as s:
        check(check_page(s, "dashboard-ep.png") > 1, "several ranks drawn")


def main():
    if not shutil.which(ARGS.chromium) and not os.path.exists(ARGS.chromium):
        print(f"chromium not found ({ARGS.chromium})")
        return 1
    return run_tests(tests_of(globals()))


if __name__ == "__main__":
    sys.exit(main())
