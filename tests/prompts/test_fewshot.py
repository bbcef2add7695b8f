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


def test_empty_response():
    res = parse_response("", word_limit=30)
    assert res.items == [] and res.candidates == 0
