"""DSG questions for any prompt from any LLM engine: the DSG paper's pipeline on stage 1's engine.

- :mod:`.answer`: the numbered ``id | value`` answer format, written and parsed (drop reasons);
- :mod:`.requests`: few-shot requests with DSG-1k examples, fitted into the model's context;
- :mod:`.pipeline`: prompts in, questions (or a counted reason) out, one engine call.
"""

from __future__ import annotations

from selma_ray.prompts.dsg.answer import DSG_DROP_REASONS, ParsedAnswer, format_answer, parse_answer
from selma_ray.prompts.dsg.pipeline import DsgCounts, Outcome, PromptToAsk, ask_questions
from selma_ray.prompts.dsg.requests import build_request, choose_examples, example_pool

__all__ = [
    "DSG_DROP_REASONS",
    "DsgCounts",
    "Outcome",
    "ParsedAnswer",
    "PromptToAsk",
    "ask_questions",
    "build_request",
    "choose_examples",
    "example_pool",
    "format_answer",
    "parse_answer",
]
