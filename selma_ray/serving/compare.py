"""The ``/compare`` routes of the images API: human side-by-side ratings of a run's eval images.

Owns the HTTP side and the page; what is shown, the votes and the win rates are
:mod:`selma_ray.evaluation.votes`. :func:`add_compare_routes` adds, to the app of
:func:`~selma_ray.serving.app.create_app` when its settings carry a
:class:`~selma_ray.evaluation.votes.CompareSettings`:

* ``GET /compare``: the rating page (self-contained HTML, no external assets). The rater's name
  comes from ``?rater=NAME`` or a field on the page. It shows a prompt and two images labelled
  only A and B, with buttons (and keys) A, tie, B; each vote loads the next pair.
* ``GET /compare/next?rater=NAME``: JSON ``{done, voted, total}`` and, until done, ``pair`` (an
  opaque token), ``item_id``, ``prompt``, ``seed`` and ``images: {A, B}`` (URLs).
* ``GET /compare/image/{pair}/{side}``: the PNG of side ``A`` or ``B`` of a pair token.
* ``POST /compare/vote``: ``{"rater", "pair", "choice": "A" | "B" | "tie"}`` -> the vote
  recorded (variants included: they are revealed only once the vote is in).

Auth: the page itself holds no run data and needs no token; the three data routes need the
bearer token like every other route when ``serve.auth_token_env`` is set. The page reads the
token from the URL fragment (``/compare?rater=ann#token=SECRET``; a fragment is never sent to
the server, so it stays out of access logs) or a password field, and sends it as the
``Authorization`` header, fetching the images with it too.

Errors are the API's JSON: 404 ``no_eval_results`` until the run has eval results (the routes
work as soon as it has them), 400 for a bad rater name, choice or pair token, 409
``already_voted``. Storage is read and written off the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from selma_ray.evaluation.votes import (
    AlreadyVoted,
    CompareSettings,
    Comparisons,
    NoEvalResults,
    UnknownPair,
)
from selma_ray.serving.api import APIError

__all__ = ["COMPARE_ROUTES", "MAX_VOTE_BYTES", "PAGE", "add_compare_routes"]

COMPARE_ROUTES = "GET /compare, GET /compare/next, GET /compare/image/{pair}/{side}, " + (
    "POST /compare/vote"
)
#: Largest accepted vote body.
MAX_VOTE_BYTES = 4096


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` in a worker thread; map the ratings' errors to API errors."""
    try:
        return await run_in_threadpool(fn, *args)
    except NoEvalResults as e:
        raise APIError(404, str(e), code="no_eval_results", type="not_found_error") from None
    except AlreadyVoted as e:
        raise APIError(409, str(e), code="already_voted") from None
    except UnknownPair as e:
        raise APIError(400, str(e), param="pair", code="unknown_pair") from None
    except ValueError as e:
        raise APIError(400, str(e), code="invalid_value") from None


def add_compare_routes(
    app: FastAPI, settings: CompareSettings, auth: Callable[[Request], None]
) -> Comparisons:
    """Add the ``/compare`` routes (see the module docstring); returns their core."""
    comparisons = Comparisons(settings)

    async def ready() -> None:
        # the run's pairs: a misconfigured pair list is the server's fault, not the client's
        try:
            await run_in_threadpool(lambda: comparisons.candidates)
        except NoEvalResults as e:
            raise APIError(404, str(e), code="no_eval_results", type="not_found_error") from None
        except ValueError as e:
            raise APIError(500, str(e), code="compare_pairs", type="server_error") from None

    @app.get("/compare")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})

    @app.get("/compare/next")
    async def next_pair(request: Request, rater: str = "") -> JSONResponse:
        auth(request)
        await ready()
        shown, voted, total = await _call(comparisons.next_pair, rater)
        body: dict[str, Any] = {"done": shown is None, "voted": voted, "total": total}
        if shown is not None:
            base = request.scope.get("root_path", "").rstrip("/") + "/compare/image/"
            body.update(shown.public())
            body["images"] = {side: f"{base}{shown.token}/{side}" for side in ("A", "B")}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @app.get("/compare/image/{pair}/{side}")
    async def image(pair: str, side: str, request: Request) -> Response:
        auth(request)
        await ready()
        data = await _call(comparisons.image, pair, side)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private"})

    @app.post("/compare/vote")
    async def vote(request: Request) -> JSONResponse:
        auth(request)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_VOTE_BYTES:
                raise APIError(413, f"vote body over {MAX_VOTE_BYTES} bytes", code="body_too_large")
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("rater", "pair", "choice")
        ):
            msg = 'send a JSON object {"rater": NAME, "pair": TOKEN, "choice": "A" | "B" | "tie"}'
            raise APIError(400, msg, code="invalid_vote")
        await ready()
        recorded = await _call(comparisons.vote, body["rater"], body["pair"], body["choice"])
        return JSONResponse(recorded)

    return comparisons


#: The rating page: plain HTML + JS, nothing fetched but this server's /compare routes.
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Which image fits the prompt?</title>
<style>
body{font-family:sans-serif;margin:20px auto;max-width:1100px;color:#222;text-align:center}
#prompt{font-size:1.3em;margin:16px auto;max-width:900px;min-height:1.5em}
.pair{display:flex;gap:24px;justify-content:center}
figure{margin:0}
figure img{width:min(45vw,512px);height:min(45vw,512px);object-fit:contain;
  background:#eee;border:1px solid #ccc}
figcaption{font-size:1.5em;font-weight:bold;margin-top:4px}
.buttons button{font-size:1.2em;margin:12px 10px;padding:8px 24px}
#status{color:#555}#status.error{color:#b00}
#setup input{font-size:1em;margin:4px}
</style></head>
<body data-state="setup" data-voted="0">
<h1>Which image fits the prompt better?</h1>
<div id="setup">
  <label>Your name <input id="rater" autocomplete="username" placeholder="e.g. ann"></label>
  <label>Access token <input id="token" type="password" placeholder="if the server asks"></label>
  <button id="start">Start</button>
</div>
<div id="rating" hidden>
  <p id="prompt"></p>
  <div class="pair">
    <figure><img id="imgA" alt="image A"><figcaption>A</figcaption></figure>
    <figure><img id="imgB" alt="image B"><figcaption>B</figcaption></figure>
  </div>
  <div class="buttons">
    <button id="voteA" disabled>A is better</button>
    <button id="voteTie" disabled>Tie</button>
    <button id="voteB" disabled>B is better</button>
  </div>
  <p><small>Keys: a, t, b. Judge how well each image shows what the prompt says.</small></p>
</div>
<p id="status"></p>
<script>
"use strict";
const base = location.pathname.replace(/\\/+$/, "");
const query = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
let rater = query.get("rater") || "";
let token = fragment.get("token") || "";
let current = null;
let objectUrls = [];
const $ = (id) => document.getElementById(id);

function setState(state) { document.body.dataset.state = state; }
function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}
function enable(on) { for (const id of ["voteA", "voteTie", "voteB"]) $(id).disabled = !on; }

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = Object.assign({}, opts.headers || {});
  if (token) opts.headers["Authorization"] = "Bearer " + token;
  const r = await fetch(path, opts);
  if (!r.ok) {
    let message = "HTTP " + r.status;
    try { message = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    if (r.status === 401) { $("setup").hidden = false; }
    throw new Error(message);
  }
  return r;
}

function loadImage(img, url) {
  return api(url).then((r) => r.blob()).then((blob) => new Promise((resolve, reject) => {
    const u = URL.createObjectURL(blob);
    objectUrls.push(u);
    img.onload = resolve;
    img.onerror = () => reject(new Error("an image did not load"));
    img.src = u;
  }));
}

async function next() {
  enable(false);
  setState("loading");
  current = null;
  const r = await api(base + "/next?rater=" + encodeURIComponent(rater));
  const p = await r.json();
  for (const u of objectUrls) URL.revokeObjectURL(u);
  objectUrls = [];
  document.body.dataset.voted = String(p.voted);
  if (p.done) {
    $("rating").hidden = true;
    setState("done");
    status("All " + p.total + " pairs rated. Thank you, " + rater + "!");
    return;
  }
  $("prompt").textContent = p.prompt;
  await Promise.all([loadImage($("imgA"), p.images.A), loadImage($("imgB"), p.images.B)]);
  current = p;
  status(rater + ": " + p.voted + " of " + p.total + " pairs rated");
  enable(true);
  setState("ready");
}

async function vote(choice) {
  if (!current) return;
  const pair = current.pair;
  current = null;
  enable(false);
  setState("voting");
  await api(base + "/vote", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({rater: rater, pair: pair, choice: choice}),
  });
  await next();
}

function run(promise) {
  promise.catch((e) => { setState("error"); status(e.message, true); });
}

function start() {
  rater = rater || $("rater").value.trim();
  token = token || $("token").value.trim();
  if (!rater) { status("Enter your name to start.", true); return; }
  $("setup").hidden = true;
  $("rating").hidden = false;
  run(next());
}

$("start").addEventListener("click", start);
$("voteA").addEventListener("click", () => run(vote("A")));
$("voteB").addEventListener("click", () => run(vote("B")));
$("voteTie").addEventListener("click", () => run(vote("tie")));
document.addEventListener("keydown", (ev) => {
  if (ev.target.tagName === "INPUT") return;
  const choice = {a: "A", b: "B", t: "tie"}[ev.key.toLowerCase()];
  if (choice && current) run(vote(choice));
});
if (rater) start();
</script>
</body></html>
"""
