"""The /compare rating routes: over FastAPI's TestClient on a run dir the test writes (no
models), their settings from the serve builder, and a scripted rater in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from selma_ray import layout
from selma_ray.evaluation.votes import CompareSettings, Comparisons, read_votes
from selma_ray.serving.api import token_digest
from selma_ray.serving.app import AppSettings, create_app
from selma_ray.storage import RunDir
from tests.evaluation.test_votes import COLORS, ITEMS, RUN_SEED, write_eval_run

TOKEN = "compare-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _no_images(job):  # the compare routes never draw
    raise AssertionError("generate called")


def app_settings(compare: CompareSettings | None, auth: bool = True) -> AppSettings:
    return AppSettings(
        variants=("base", "merged"),
        default_variant="merged",
        auth_digest=token_digest(TOKEN) if auth else None,
        compare=compare,
    )


@pytest.fixture
def rd(tmp_path) -> RunDir:
    return write_eval_run(str(tmp_path / "run"))


@pytest.fixture
def compare(rd) -> CompareSettings:
    return CompareSettings(rd.uri, RUN_SEED)


@pytest.fixture
def client(compare):
    with TestClient(create_app(_no_images, app_settings(compare))) as c:
        yield c


def _hides_variants(text: str) -> bool:
    for prompt, _, _ in ITEMS.values():
        text = text.replace(prompt, "")
    return not any(v in text for v in COLORS)


def test_next_image_and_vote_routes_rate_a_pair_without_naming_its_variants(client, compare, rd):
    page = client.get("/compare")  # the page: no token needed, no run data in it
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="voteA"' in page.text and 'src="http' not in page.text
    assert not any(prompt in page.text for prompt, _, _ in ITEMS.values())
    assert client.get("/compare/next?rater=ann").status_code == 401  # data routes: token

    r = client.get("/compare/next?rater=ann", headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert _hides_variants(r.text)
    assert body["done"] is False and body["voted"] == 0 and body["total"] == 15
    assert set(body) == {"done", "voted", "total", "pair", "item_id", "prompt", "seed", "images"}
    core = Comparisons(compare)  # same key: sees which variants the token stands for
    shown = core.resolve(body["pair"])
    assert (body["item_id"], body["prompt"], body["seed"]) == (
        shown.candidate.item_id,
        shown.candidate.prompt,
        shown.candidate.seed,
    )
    assert body["images"] == {
        "A": f"/compare/image/{body['pair']}/A",
        "B": f"/compare/image/{body['pair']}/B",
    }
    for side, variant in (("A", shown.left), ("B", shown.right)):
        img = client.get(body["images"][side], headers=AUTH)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        file = layout.eval_images(variant, f"{shown.candidate.item_id}.png")
        assert img.content == rd.read_bytes(*file)
    assert client.get(body["images"]["A"]).status_code == 401

    vote = {"rater": "ann", "pair": body["pair"], "choice": "B"}
    r = client.post("/compare/vote", json=vote, headers=AUTH)
    assert r.status_code == 200, r.text
    recorded = r.json()
    assert (recorded["left"], recorded["right"], recorded["winner"]) == (
        shown.left,
        shown.right,
        shown.right,
    )
    assert read_votes(rd) == [recorded]
    again = client.post("/compare/vote", json=vote, headers=AUTH)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_voted"
    after = client.get("/compare/next?rater=ann", headers=AUTH).json()
    assert after["voted"] == 1 and after["pair"] != body["pair"]


def test_compare_routes_answer_bad_input_with_json_errors(client, tmp_path):
    nxt = client.get("/compare/next?rater=ann", headers=AUTH).json()

    def code(r, status):
        assert r.status_code == status, r.text
        return r.json()["error"]["code"]

    assert code(client.get("/compare/next?rater=a/b", headers=AUTH), 400) == "invalid_value"
    assert code(client.get("/compare/next", headers=AUTH), 400) == "invalid_value"
    assert code(client.get("/compare/image/nope.00/A", headers=AUTH), 400) == "unknown_pair"
    assert code(client.get(f"/compare/image/{nxt['pair']}/C", headers=AUTH), 400) == (
        "invalid_value"
    )
    bad = [
        {"rater": "ann", "pair": nxt["pair"], "choice": "C"},
        {"rater": "ann", "pair": nxt["pair"]},
        [1, 2],
    ]
    for body in bad:
        r = client.post("/compare/vote", json=body, headers=AUTH)
        assert code(r, 400) in ("invalid_value", "invalid_vote")
    r = client.post("/compare/vote", content=b"x" * 5000, headers=AUTH)
    assert code(r, 413) == "body_too_large"
    # a run without eval results: 404 naming the stage, until it has them
    empty = CompareSettings(str(tmp_path / "empty"), RUN_SEED)
    with TestClient(create_app(_no_images, app_settings(empty))) as c:
        r = c.get("/compare/next?rater=ann", headers=AUTH)
        assert code(r, 404) == "no_eval_results" and "eval stage" in r.json()["error"]["message"]
        write_eval_run(str(tmp_path / "empty"))
        assert c.get("/compare/next?rater=ann", headers=AUTH).status_code == 200
    # no compare settings: no page
    with TestClient(create_app(_no_images, app_settings(None))) as c:
        assert c.get("/compare").status_code == 404


def test_serve_builder_gives_the_app_the_runs_compare_settings(tmp_path):
    from selma_ray.config import ConfigError, SelmaConfig
    from selma_ray.serving.args import ServeArgs, resolve

    rd = write_eval_run(str(tmp_path / "run"))
    rd.write_text(SelmaConfig.model_validate({"seed": 7}).to_yaml(), *layout.config())
    compare = resolve({"run_dir": rd.uri}).app.compare
    assert compare is not None
    assert (compare.run_dir, compare.run_seed, compare.pairs) == (rd.uri, 7, ())
    chosen = resolve({"run_dir": rd.uri, "compare_pairs": "joint:merged,merged:base"})
    assert chosen.app.compare.pairs == (("joint", "merged"), ("merged", "base"))
    assert resolve({"run_dir": rd.uri, "compare_pairs": ""}).app.compare is None
    with pytest.raises(ConfigError, match=r"compare_pairs: .*\['nope'\]"):
        resolve({"run_dir": rd.uri, "compare_pairs": "merged:nope"})
    with pytest.raises(ConfigError, match="compare_pairs: .merged. is not a pair.*FIRST:SECOND"):
        ServeArgs.parse({"run_dir": rd.uri, "compare_pairs": "merged"})


# --------------------------------------------------------------------------- headless Chromium


def _chromium() -> str | None:
    return next(
        (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )


class Browser:
    """Headless Chromium driven over the DevTools protocol (``websockets``' sync client)."""

    def __init__(self, url: str, profile: str) -> None:
        self.proc = subprocess.Popen(
            [
                _chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-proxy-server",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1200,1000",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = f"{profile}/DevToolsActivePort"
        deadline = time.monotonic() + 30
        while True:
            try:
                with open(port_file) as f:
                    port = int(f.readline())
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        from websockets.sync.client import connect

        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        self.n = 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg["result"]

    def eval(self, expression: str):
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0):
        """The expression's value once truthy; while the page loads (``document.body`` still
        null, say) an expression that throws counts as not yet."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = self.call(
                "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
            )
            value = None if "exceptionDetails" in result else result["result"].get("value")
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(
            f"timed out waiting for {expression}: {self.eval('document.body.innerText')}"
        )

    def click(self, element_id: str) -> None:
        """A real mouse click at the centre of the element (pressed, released)."""
        x, y = self.eval(
            f"(() => {{ const e = document.getElementById('{element_id}');"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Server:
    """uvicorn on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


#: How green an image is on average (G minus the mean of R and B), read back in the browser.
GREENNESS = """(() => { const g = (img) => {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const x = c.getContext('2d'); x.drawImage(img, 0, 0);
  const d = x.getImageData(0, 0, c.width, c.height).data; let s = 0;
  for (let i = 0; i < d.length; i += 4) s += d[i + 1] - (d[i] + d[i + 2]) / 2;
  return s / (d.length / 4); };
  return [g(document.getElementById('imgA')), g(document.getElementById('imgB'))]; })()"""


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary")
def test_a_scripted_rater_clicks_ten_pairs_in_chromium_and_the_counts_reach_the_report(
    compare, rd, tmp_path
):
    """The rater prefers the greener image (merged's images are the only green ones) and
    presses tie on the 3rd and 7th pair; every pair offered is merged against another
    variant, so the report must show 8 merged wins, 2 ties, no losses, over 10 votes."""
    pytest.importorskip("websockets")
    from selma_ray.evaluation.report import build_report

    server = Server(create_app(_no_images, app_settings(compare)))
    browser = None
    try:
        url = f"http://127.0.0.1:{server.port}/compare?rater=ann#token={TOKEN}"
        browser = Browser(url, str(tmp_path / "chromium-profile"))
        for i in range(10):
            browser.wait_for(
                f"document.body.dataset.state === 'ready' && document.body.dataset.voted === '{i}'"
            )
            text = browser.eval("document.body.innerText")
            assert _hides_variants(text) and f"{i} of 15 pairs rated" in text
            a, b = browser.eval(GREENNESS)
            assert max(a, b) > 150 and min(a, b) < 1  # one merged (green) image, one other
            browser.click("voteTie" if i in (2, 6) else "voteA" if a > b else "voteB")
        browser.wait_for("document.body.dataset.state === 'ready'")
        assert browser.eval("document.body.dataset.voted") == "10"
    finally:
        if browser is not None:
            browser.close()
        server.close()

    votes = read_votes(rd)
    assert len(votes) == 10 and {v["rater"] for v in votes} == {"ann"}
    assert Counter(v["winner"] for v in votes) == {"merged": 8, "tie": 2}
    by_pair = Counter(tuple(v["pair"]) for v in votes)
    build_report(rd)
    page = rd.read_text(*layout.eval_report_html())
    rows = re.findall(
        r'<tr data-first="([^"]+)" data-second="([^"]+)" data-n="(\d+)" data-wins="(\d+)" '
        r'data-losses="(\d+)" data-ties="(\d+)">',
        page,
    )
    assert {(f, s): int(n) for f, s, n, *_ in rows} == dict(by_pair)
    assert sum(int(r[3]) for r in rows) == 8 and sum(int(r[5]) for r in rows) == 2
    assert all(r[0] == "merged" and r[4] == "0" for r in rows)
    assert "10 vote(s) by 1 rater(s)" in page
