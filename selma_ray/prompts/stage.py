"""SELMA stage 1: the self-instruct loop that grows each skill's prompt pool to its target.

Rounds run in lock-step over the skills still short of their target, so one engine call (one
Ray Data job for vLLM) serves every skill per round. Per skill and round: sample K examples
from the pool (seeds + accepted prompts) for each request, ask for M more, parse, drop
near-duplicates of anything kept before (ROUGE-L), and save the pool. A killed run resumes at
the next unfinished round; every random choice derives from (run seed, skill, round), so a
resumed run makes the same requests an uninterrupted one would.

An engine that counts tokens (``token_budget()``: ``vllm``, ``transformers``) has every request
fitted into the model's context before it is sent (:func:`~selma_ray.prompts.fewshot.fit_request`:
fewer examples, then fewer response tokens, else dropped); ``stats.json`` counts per skill the
requests planned, sent, shortened, with fewer response tokens, and dropped by reason. The
``openai`` engine cannot count: its requests go out as built.

Prompts an LLM engine writes come without DSG questions; before each round (and once more at
the end) the same engine is asked for the questions of every prompt accepted since the last
ask, all skills in one call (:mod:`selma_ray.prompts.dsg`). An answer that cannot be read
leaves ``questions`` null, counted by reason under ``dsg`` in ``stats.json``; a resumed run
asks only for the prompts it had not asked about.

Outputs in the run directory, per skill: ``prompts/<skill>.jsonl`` and ``.parquet`` (rows:
id, skill, prompt, engine, model, round, questions) and ``prompts/stats.json``.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from selma_ray import layout
from selma_ray.config import PromptsConfig
from selma_ray.prompts.dedup import filter_near_duplicates
from selma_ray.prompts.dsg.pipeline import DsgCounts, PromptToAsk, ask_questions
from selma_ray.prompts.engines.base import PromptEngine, TokenBudget, as_completion
from selma_ray.prompts.fewshot import (
    FitResult,
    build_request,
    fit_request,
    parse_response,
    sample_examples,
)
from selma_ray.seeds import derive_seed
from selma_ray.skills import Skill
from selma_ray.storage import RunDir

log = logging.getLogger(__name__)


@dataclass
class SkillState:
    """Everything needed to resume one skill: accepted rows and counters, saved every round."""

    skill: str
    rounds: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    requested: int = 0
    responses: int = 0
    parsed: int = 0
    dropped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    #: requests planned, sent, shortened (fewer examples), max_tokens_reduced, miscounted
    requests: Counter = field(default_factory=Counter)
    #: requests not answered, by reason (fewshot.REQUEST_DROP_REASONS)
    requests_dropped: Counter = field(default_factory=Counter)
    #: rows[:dsg_checked] had their DSG questions asked for (or came with them)
    dsg_checked: int = 0
    dsg: DsgCounts = field(default_factory=DsgCounts)

    def to_json(self) -> dict[str, Any]:
        return {
            "skill": self.skill,
            "rounds": self.rounds,
            "requested": self.requested,
            "responses": self.responses,
            "parsed": self.parsed,
            "dropped": dict(self.dropped),
            "seconds": round(self.seconds, 3),
            "requests": dict(self.requests),
            "requests_dropped": dict(self.requests_dropped),
            "dsg_checked": self.dsg_checked,
            "dsg": self.dsg.to_json(),
            "rows": self.rows,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SkillState:
        return cls(
            skill=data["skill"],
            rounds=data["rounds"],
            rows=data["rows"],
            requested=data["requested"],
            responses=data["responses"],
            parsed=data["parsed"],
            dropped=Counter(data["dropped"]),
            seconds=data["seconds"],
            requests=Counter(data.get("requests", {})),
            requests_dropped=Counter(data.get("requests_dropped", {})),
            dsg_checked=data.get("dsg_checked", 0),
            dsg=DsgCounts.from_json(data.get("dsg")),
        )

    def stats(self, target: int) -> dict[str, Any]:
        return {
            "target": target,
            "accepted": len(self.rows),
            "rounds": self.rounds,
            "requested": self.requested,
            "responses": self.responses,
            "parsed": self.parsed,
            "dropped": dict(sorted(self.dropped.items())),
            "requests": {
                **{k: self.requests[k] for k in REQUEST_COUNTS},
                "dropped": dict(sorted(self.requests_dropped.items())),
            },
            "seconds": round(self.seconds, 3),
            "dsg": self.dsg.to_json(),
        }


#: Request counters of a skill's stats (``requests``), beside ``dropped`` by reason.
#: ``miscounted``: requests whose prompt the engine counted otherwise than the budget did.
REQUEST_COUNTS = ("planned", "sent", "shortened", "max_tokens_reduced", "miscounted")


def _state_path(skill: str) -> tuple[str, str]:
    return layout.prompts_state(f"{skill}.json")


def load_state(run_dir: RunDir, skill: str) -> SkillState:
    if run_dir.exists(*_state_path(skill)):
        return SkillState.from_json(run_dir.read_json(*_state_path(skill)))
    return SkillState(skill=skill)


def build_round(
    skill: Skill,
    state: SkillState,
    cfg: PromptsConfig,
    seed: int,
    budget: TokenBudget | None = None,
) -> list[FitResult]:
    """The requests of the next round for one skill (deterministic in seed, skill, round),
    each fitted into ``budget`` when the engine counts tokens (``request`` None: dropped)."""
    rng = random.Random(derive_seed(seed, skill.name, state.rounds, "examples"))
    pool = list(skill.seeds) + [r["prompt"] for r in state.rows]
    out = []
    for i in range(cfg.requests_per_round):
        examples = sample_examples(pool, cfg.examples_per_request, rng)
        kwargs: dict[str, Any] = {
            "n_items": cfg.prompts_per_request,
            "seed": derive_seed(seed, skill.name, state.rounds, "request", i),
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_tokens,
        }
        if budget is None:
            out.append(FitResult(build_request(skill, examples, **kwargs), None))
        else:
            out.append(fit_request(skill, examples, budget, **kwargs))
    return out


def absorb_round(
    skill: Skill,
    state: SkillState,
    fits: list[FitResult],
    responses: list[Any],
    cfg: PromptsConfig,
    engine: PromptEngine,
    model: str,
) -> int:
    """Parse one round's responses (one per request sent, in order) into the skill's pool and
    count its requests; returns the number of prompts accepted."""
    sent = [f for f in fits if f.request is not None]
    requests = [f.request for f in sent]
    state.requests["planned"] += len(fits)
    state.requests["sent"] += len(requests)
    state.requests["shortened"] += sum(f.shortened for f in fits)
    state.requests["max_tokens_reduced"] += sum(f.max_tokens_reduced for f in fits)
    state.requests_dropped.update(f.dropped for f in fits if f.dropped)
    candidates: list[str] = []
    answered = 0
    for fit, raw in zip(sent, responses, strict=True):
        req = fit.request
        completion = as_completion(raw)
        counted, fed = fit.prompt_tokens, completion.prompt_tokens
        if counted is not None and fed is not None and counted != fed:
            # the engine saw another prompt length than the budget counted: a fitting bug
            log.warning(
                "%s: request counted as %d tokens, the engine fed %d", skill.name, counted, fed
            )
            state.requests["miscounted"] += 1
        if completion.error:
            state.requests_dropped[completion.error] += 1
            continue
        answered += 1
        parsed = parse_response(
            completion.text,
            word_limit=skill.word_limit,
            examples=req.examples,
            truncated=completion.truncated,
        )
        state.parsed += parsed.candidates
        state.dropped.update(parsed.dropped)
        candidates.extend(parsed.items)
    existing = list(skill.seeds) + [r["prompt"] for r in state.rows]
    keep = filter_near_duplicates(candidates, existing, threshold=cfg.dedup_threshold)
    kept = [c for c, k in zip(candidates, keep, strict=True) if k]
    state.dropped["near_duplicate"] += len(candidates) - len(kept)
    room = cfg.num_prompts - len(state.rows)
    if len(kept) > room:
        state.dropped["over_target"] += len(kept) - room
        kept = kept[:room]
    for text in kept:
        questions = engine.questions_for(text)
        state.rows.append(
            {
                "id": f"{skill.name}-{len(state.rows):05d}",
                "skill": skill.name,
                "prompt": text,
                "engine": engine.name,
                "model": model,
                "round": state.rounds,
                "questions": [q.to_dict() for q in questions] if questions is not None else None,
            }
        )
    state.requested += len(requests) * cfg.prompts_per_request
    state.responses += answered
    state.rounds += 1
    return len(kept)


def _progress_bars(skills: list[Skill], states: dict[str, SkillState], target: int, enabled: bool):
    from selma_ray.runlog import console_stream

    stream = console_stream()
    if not enabled or not stream.isatty():  # no bar redraws in a log or a pipe
        return {}
    from tqdm.auto import tqdm

    width = max(len(s.name) for s in skills)
    return {
        s.name: tqdm(
            total=target,
            initial=len(states[s.name].rows),
            desc=f"prompts {s.name:<{width}}",
            position=i,
            leave=True,
            unit="prompt",
            file=stream,
        )
        for i, s in enumerate(skills)
    }


def generate_prompts(
    cfg: PromptsConfig,
    run_dir: RunDir,
    engine: PromptEngine,
    *,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the self-instruct loop for every skill until its target or ``max_rounds``.

    Returns the per-skill stats; also writes them, and the prompts, into the run directory.
    An engine with a ``token_budget()`` is asked for it first (the ``vllm`` engine refuses a
    ``max_model_len`` the model does not support there, before any engine starts).
    """
    token_budget = getattr(engine, "token_budget", None)
    budget = token_budget() if callable(token_budget) else None
    skills = list(cfg.skills)
    states = {s.name: load_state(run_dir, s.name) for s in skills}
    model = "scene-graph" if cfg.engine == "scene-graph" else cfg.model
    bars = _progress_bars(skills, states, cfg.num_prompts, progress)
    try:
        while True:
            # questions for the prompts the last round accepted (or a killed run left)
            ask_dsg_questions(cfg, run_dir, engine, states, seed, budget)
            active = [
                s
                for s in skills
                if len(states[s.name].rows) < cfg.num_prompts
                and states[s.name].rounds < cfg.max_rounds
            ]
            if not active:
                break
            plan = [(s, build_round(s, states[s.name], cfg, seed, budget)) for s in active]
            flat = [f.request for _, fits in plan for f in fits if f.request is not None]
            t0 = time.perf_counter()
            responses = engine.generate(flat)
            if len(responses) != len(flat):
                msg = (
                    f"engine {engine.name} returned {len(responses)} texts for {len(flat)} requests"
                )
                raise RuntimeError(msg)
            share = (time.perf_counter() - t0) / len(active)
            offset = 0
            for skill, fits in plan:
                state = states[skill.name]
                t1 = time.perf_counter()
                n_sent = sum(f.request is not None for f in fits)
                n_new = absorb_round(
                    skill, state, fits, responses[offset : offset + n_sent], cfg, engine, model
                )
                offset += n_sent
                state.seconds += share + time.perf_counter() - t1
                run_dir.write_json(state.to_json(), *_state_path(skill.name))
                if skill.name in bars:
                    bars[skill.name].update(n_new)
                log.debug("%s round %d: +%d", skill.name, state.rounds, n_new)
    finally:
        for bar in bars.values():
            bar.close()
    return write_outputs(cfg, run_dir, states)


def ask_dsg_questions(
    cfg: PromptsConfig,
    run_dir: RunDir,
    engine: PromptEngine,
    states: dict[str, SkillState],
    seed: int,
    budget: TokenBudget | None,
) -> None:
    """Ask ``engine``, in one call, for the DSG questions of every row accepted since the last
    ask that came without them; saves the states that changed."""
    # the scene-graph engine writes its own questions and cannot answer a DSG request
    ask = cfg.dsg_questions.enabled and cfg.engine != "scene-graph"
    pending: list[tuple[SkillState, dict[str, Any]]] = []
    for state in states.values():
        if ask:
            rows = state.rows[state.dsg_checked :]
            pending += [(state, r) for r in rows if r["questions"] is None]
        state.dsg_checked = len(state.rows)
    if not pending:
        return
    t0 = time.perf_counter()
    outcomes = ask_questions(
        engine,
        [PromptToAsk(r["id"], r["skill"], r["prompt"]) for _, r in pending],
        cfg.dsg_questions,
        seed=seed,
        budget=budget,
    )
    share = (time.perf_counter() - t0) / len(pending)
    for (state, row), outcome in zip(pending, outcomes, strict=True):
        if outcome.questions is not None:
            row["questions"] = [q.to_dict() for q in outcome.questions]
        state.dsg.add(outcome)
        state.dsg.seconds += share
    for state in {id(s): s for s, _ in pending}.values():
        run_dir.write_json(state.to_json(), *_state_path(state.skill))
    n_parsed = sum(o.questions is not None for o in outcomes)
    log.info("DSG questions for %d of %d prompts", n_parsed, len(outcomes))


PARQUET_COLUMNS = ("id", "skill", "prompt", "engine", "model", "round", "questions")


def write_skill_prompts(run_dir: RunDir, name: str, rows: list[dict[str, Any]]) -> None:
    """A skill's prompt rows as ``prompts/<skill>.jsonl`` and ``.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_dir.write_jsonl(rows, *layout.prompts_file(name))
    table = pa.table(
        {
            **{c: [r[c] for r in rows] for c in PARQUET_COLUMNS if c != "questions"},
            # questions as JSON text: one schema whatever the engine (None when unknown)
            "questions": [
                None if r["questions"] is None else json.dumps(r["questions"]) for r in rows
            ],
        },
        schema=pa.schema(
            [
                ("id", pa.string()),
                ("skill", pa.string()),
                ("prompt", pa.string()),
                ("engine", pa.string()),
                ("model", pa.string()),
                ("round", pa.int64()),
                ("questions", pa.string()),
            ]
        ),
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    run_dir.write_bytes(buf.getvalue(), *layout.prompts_file(name, "parquet"))


def write_outputs(
    cfg: PromptsConfig, run_dir: RunDir, states: dict[str, SkillState]
) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for name, state in states.items():
        write_skill_prompts(run_dir, name, state.rows)
        stats[name] = state.stats(cfg.num_prompts)
    run_dir.write_json(stats, *layout.prompts_stats())
    return stats


def shortfalls(stats: dict[str, Any]) -> list[str]:
    """'skill: reached X of Y after N rounds' for every skill short of its target."""
    return [
        f"{name}: reached {s['accepted']} of {s['target']} after {s['rounds']} rounds"
        for name, s in stats.items()
        if s["accepted"] < s["target"]
    ]


def read_prompts(run_dir: RunDir, skill: str) -> list[dict[str, Any]]:
    """The accepted prompts of one skill, as written by :func:`generate_prompts`."""
    return run_dir.read_jsonl(*layout.prompts_file(skill))
