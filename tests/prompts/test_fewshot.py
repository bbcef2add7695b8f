from __future__ import annotations

from selma_ray.prompts.fewshot import build_request, parse_response, split_items
from selma_ray.skills import BUILTIN_SKILLS

COCO = BUILTIN_SKILLS["coco"]


def test_request_numbers_examples_and_continues():
    req = build_request(COCO, ["a cat on a mat today", "a dog in a car now"], n_items=5, seed=7)
    user = req.messages[-1]["content"]
    assert "1. a cat on a mat today\n2. a dog in a car now" in user
    assert "from 3 to 7" in user
    assert req.start_index == 3 and req.n_items == 5 and req.seed == 7
    assert req.prompt.endswith("\n3.")
    assert req.messages[0]["role"] == "system"


def test_parses_the_usual_list_styles():
    text = (
        "Sure! Here are more prompts:\n\n"
        "4. A red kite above a windy beach.\n"
        "5) Two kids sharing an umbrella in the rain\n"
        '  6 .   "A cat sleeping on a warm laptop."  \n'
        "- A bus parked beside a fruit stand.\n"
        "* **A man repairing a bicycle in his garage.**\n"
        "\u2022 Prompt: A bowl of soup on a wooden table.\n"
        "7. A chef slicing onions in a busy kitchen,\n"
        "   while steam rises from a pot.\n"
        "\nI hope these help!"
    )
    res = parse_response(text, word_limit=30)
    assert res.items == [
        "A red kite above a windy beach.",
        "Two kids sharing an umbrella in the rain",
        "A cat sleeping on a warm laptop.",
        "A bus parked beside a fruit stand.",
        "A man repairing a bicycle in his garage.",
        "A bowl of soup on a wooden table.",
        "A chef slicing onions in a busy kitchen, while steam rises from a pot.",
    ]
    assert not res.dropped


def test_drops_are_counted_by_reason():
    examples = ("A brown purse is sitting on a green bench.",)
    text = "\n".join(
        [
            "4. ",
            "5. Hi there",
            "6. " + " ".join(["word"] * 31),
            "7. a brown purse is sitting on a green bench",
            "8. A horse grazing in a foggy field.",
            "9. A horse grazing in a foggy field!",
            "10. A lighthouse on a rocky coast at",
        ]
    )
    res = parse_response(text, word_limit=30, examples=examples, truncated=True)
    assert res.items == ["A horse grazing in a foggy field."]
    assert res.dropped == {
        "empty": 1,
        "too_short": 1,
        "too_long": 1,
        "copies_example": 1,
        "repeat_in_response": 1,
        "truncated": 1,
    }
    assert res.candidates == 7


def test_unnumbered_response_is_read_line_by_line():
    assert split_items("A cup of tea on a saucer.\n\nA dog chasing a ball.\n") == [
        "A cup of tea on a saucer.",
        "A dog chasing a ball.",
    ]


def test_closing_remarks_and_preambles_are_not_prompts():
    """A remark right after the last item (no blank line) starts a new sentence: not glued onto
    the item; a reply without list markers loses its preamble line (ending in a colon). Wrapped
    items still join: a line going on mid-sentence, or after a comma or a joining word."""
    assert split_items(
        "4. A brown dog running in a park\n5. Two cats on a red sofa\nI hope these prompts help!"
    ) == ["A brown dog running in a park", "Two cats on a red sofa"]
    assert split_items("1. A red kite over a beach\nNote: each prompt is under 30 words.") == [
        "A red kite over a beach"
    ]
    assert split_items("Sure! Here are three new prompts for you:\nA cat on a mat.\nA dog.") == [
        "A cat on a mat.",
        "A dog.",
    ]
    assert split_items(
        "7. A chef slicing onions,\n   Steam rising behind him\n8. A bus parked beside\n"
        "   the old market\n9. Two owls on a branch of\n   Old oak trees"
    ) == [
        "A chef slicing onions, Steam rising behind him",
        "A bus parked beside the old market",
        "Two owls on a branch of Old oak trees",
    ]


def test_empty_response():
    res = parse_response("", word_limit=30)
    assert res.items == [] and res.candidates == 0


# --------------------------------------------------------------------------- fitting requests


def _tiny_llm_budget(max_model_len: int):
    """A budget over the tiny LLM's tokenizer, counting independently of the engines: the chat
    template rendered to text, then tokenized without extra special tokens (what generate()
    and vLLM's chat() are fed)."""
    from transformers import AutoTokenizer

    from selma_ray.models import resolve_model
    from selma_ray.prompts.engines.base import TokenBudget

    tok = AutoTokenizer.from_pretrained(resolve_model("tiny:llm"))

    def count(req) -> int:
        text = tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return TokenBudget(max_model_len, count), count


SEEDS = list(COCO.seeds)


def test_too_long_request_keeps_fewer_examples_and_then_fits_exactly(tiny_models):
    from selma_ray.prompts.fewshot import fit_request

    _, count = _tiny_llm_budget(0)
    full = count(build_request(COCO, SEEDS, n_items=3, seed=1))
    two = count(build_request(COCO, SEEDS[:2], n_items=3, seed=1))
    assert two < full
    # room for two examples and 100 response tokens, not for three
    budget, _ = _tiny_llm_budget(two + 100)
    fit = fit_request(COCO, SEEDS, budget, n_items=3, seed=1, max_tokens=100)
    assert fit.request is not None and fit.dropped is None
    assert fit.request.examples == tuple(SEEDS[:2]) and fit.request.start_index == 3
    assert fit.shortened and not fit.max_tokens_reduced
    assert fit.request.max_tokens == 100 and fit.request.seed == 1
    assert fit.prompt_tokens == count(fit.request) == two
    assert fit.prompt_tokens + fit.request.max_tokens == budget.max_model_len
    # the same builder made it: identical to asking for two examples in the first place
    assert fit.request == build_request(COCO, SEEDS[:2], n_items=3, seed=1, max_tokens=100)
    # a request that fits is sent as built
    roomy, _ = _tiny_llm_budget(full + 100)
    same = fit_request(COCO, SEEDS, roomy, n_items=3, seed=1, max_tokens=100)
    assert same.request == build_request(COCO, SEEDS, n_items=3, seed=1, max_tokens=100)
    assert not same.shortened and same.prompt_tokens == full


def test_one_example_too_long_for_max_tokens_gets_the_room_left(tiny_models):
    from selma_ray.prompts.fewshot import fit_request, min_response_tokens

    _, count = _tiny_llm_budget(0)
    one = count(build_request(COCO, SEEDS[:1], n_items=3, seed=2))
    budget, _ = _tiny_llm_budget(one + 70)
    assert 70 >= min_response_tokens(COCO.word_limit)
    fit = fit_request(COCO, SEEDS, budget, n_items=3, seed=2, max_tokens=200)
    assert fit.request is not None
    assert fit.request.examples == (SEEDS[0],)
    assert fit.shortened and fit.max_tokens_reduced
    assert fit.request.max_tokens == 70
    assert count(fit.request) + fit.request.max_tokens == budget.max_model_len


def test_request_that_cannot_fit_is_dropped_with_its_reason(tiny_models):
    from selma_ray.prompts.fewshot import REQUEST_DROP_REASONS, fit_request, min_response_tokens

    _, count = _tiny_llm_budget(0)
    one = count(build_request(COCO, SEEDS[:1], n_items=3, seed=3))
    # one token short of the smallest response worth asking for
    budget, _ = _tiny_llm_budget(one + min_response_tokens(COCO.word_limit) - 1)
    fit = fit_request(COCO, SEEDS, budget, n_items=3, seed=3, max_tokens=200)
    assert fit.request is None and fit.dropped == "request_too_long"
    assert fit.dropped in REQUEST_DROP_REASONS and fit.prompt_tokens == one
    # with max_tokens below that minimum, the room left for it is enough
    small = fit_request(COCO, SEEDS, budget, n_items=3, seed=3, max_tokens=20)
    assert small.request is not None and small.request.examples == tuple(SEEDS[:2])
