"""Answers verified as a grader would (actors/answers.py + math-verify in its process pool): a
fixture of realistic responses with the reward each must get, and the 120 real SmolLM2-135M
responses to GSM8K in ../shared/data/responses, none of which is right."""

import json
import re

import pytest

from actors.answers import extract_answer, gold_answer, last_boxed
from actors.reward import Verifier
from tests.conftest import SHARED_DATA

# (verifier, gold, response, truncated at max_tokens, reward)
NUMBER = "math:last_number"  # GSM8K-style, with the last-number fallback
MARKER = "math:marker"  # GSM8K's default
BOXED = "math:boxed"  # MATH-style
FIXTURE = [
    (NUMBER, "42", "So the total is \\boxed{42}.", False, 1),
    (NUMBER, "42", "The answer is 42.", False, 1),
    (NUMBER, "42", "#### 42", False, 1),
    (NUMBER, "42", "She has 40 + 2 = 42 apples.\n#### 42", False, 1),
    (NUMBER, "42", "The answer is: 42", False, 1),
    (NUMBER, "42", "**Answer:** 42", False, 1),
    (NUMBER, "42", "42 apples in total.", False, 1),
    (NUMBER, "42", "First 12, then 30, so 12 + 30 = 42.", False, 1),
    (NUMBER, "42", "42 is what I first thought, but the correct total is 40.", False, 0),
    (NUMBER, "42", "\\boxed{41}", False, 0),
    (NUMBER, "42", "#### 41", False, 0),
    (NUMBER, "42", "The answer is 41.", False, 0),
    (NUMBER, "42", "I am not sure how to solve this.", False, 0),
    (NUMBER, "42", "", False, 0),
    (NUMBER, "42", "Let me compute 40 + 2 = 42 and then", True, 0),  # cut off: no last-number guess
    (NUMBER, "42", "so the result is \\boxed{42} and to check it we", True, 1),
    (NUMBER, "42", "#### 42\nBut wait, let me check again by", True, 1),
    (NUMBER, "42", "\\boxed{42} was a slip; it is \\boxed{43}.", False, 0),  # the last boxed counts
    (NUMBER, "42", "The answer is 42.\n#### 41", False, 0),  # the GSM8K marker wins
    (MARKER, "42", "42 apples in total.", False, 0),  # GSM8K's default: a stated answer or nothing
    (MARKER, "42", "#### 42", False, 1),
    (NUMBER, "1000", "The total is $1,000.", False, 1),  # thousands separator and currency
    (NUMBER, "1000", "\\boxed{1,000}", False, 1),
    (NUMBER, "18", "She makes $18 every day.\n#### $18", False, 1),
    (NUMBER, "18", "\\boxed{\\$18}", False, 1),
    (NUMBER, "0.5", "The answer is 1/2.", False, 1),  # a fraction equals its decimal
    (NUMBER, "3/4", "\\boxed{\\frac{3}{4}}", False, 1),
    (NUMBER, "3/4", "\\boxed{0.75}", False, 1),
    (NUMBER, "5", "The answer is 5 apples.", False, 1),  # a unit after the number
    (NUMBER, "-3", "The answer is -3.", False, 1),
    (NUMBER, "2.5", "#### 2.50", False, 1),
    (NUMBER, "42", "The answer is 42.0", False, 1),
    (NUMBER, "1200", "#### 1,200", False, 1),
    (NUMBER, "42", "The answer is forty-two.", False, 0),
    (NUMBER, "42", "Step 1: 6 * 7 = 42\nStep 2: done", False, 0),  # several numbers: the last is 2
    (NUMBER, "42", "42", False, 1),
    (NUMBER, "4", "To find the final answer: 10 - 5 = 4", False, 1),  # seen on SmolLM2: not "answer: 10"
    (MARKER, "10", "To find the final answer: 10 - 5 = 4", False, 0),
    (NUMBER, "-5", "10 - 5 = ...", False, 0),  # the last number is 5, not "-5"
    (NUMBER, "42", "The answer is 42", True, 1),
    (NUMBER, "230", "Then we multiply: 115 * 2", True, 0),  # the false positive of the issue
    (NUMBER, "230", "Then we multiply: 115 * 2", False, 0),  # last number 2, not the expression's value
    (BOXED, "\\frac{\\sqrt{3}}{2}", "Thus $\\boxed{\\frac{\\sqrt3}{2}}$.", False, 1),
    (BOXED, "\\frac{1}{2}", "The answer is 1/2", False, 0),  # MATH style: a boxed answer or nothing
    (BOXED, "(3, -1)", "The point is $\\boxed{(3,-1)}$", False, 1),
    (BOXED, "x^2+2x+1", "Expanding, \\boxed{(x+1)^2}", False, 1),
    (BOXED, "10", "\\boxed{\\boxed{10}}", False, 1),
    (BOXED, "5", "Hence \\boxed{5", True, 0),  # cut inside the box
    (BOXED, "\\pi", "The area is $\\boxed{\\pi}$.", False, 1),
    (BOXED, "12", "\\fbox{12}", False, 1),
    (BOXED, "12", "The answer is 12.", False, 0),
]


@pytest.fixture(scope="module")
def verifier():
    v = Verifier(timeout_s=60)
    yield v
    v.close()


def test_the_fixture_is_broad():
    assert len(FIXTURE) >= 40
    assert {r for *_, r in FIXTURE} == {0, 1} and any(t for *_, t, _ in FIXTURE)


@pytest.mark.parametrize("kind,gold,response,truncated,reward", FIXTURE,
                         ids=[f"{i:02d}" for i in range(len(FIXTURE))])
def test_each_response_gets_the_graders_reward(verifier, kind, gold, response, truncated, reward):
    (got, status), = verifier.score(kind, [response], gold, "{}", [truncated])
    assert got == reward, (response, extract_answer(response, kind.split(":")[1], truncated), status)


def test_gold_answers_are_parsed():
    assert gold_answer("Natalia sold 48/2 = 24 clips in May.\n#### 72") == "72"
    assert gold_answer("#### 1,200") == "1200"
    assert gold_answer("\\frac{3}{4}") == "\\frac{3}{4}"
    assert last_boxed("a \\boxed{x^{2}} b") == "x^{2}"


@pytest.mark.skipif(not (SHARED_DATA / "responses").exists(), reason="../shared/data not present")
def test_real_smollm2_responses_get_no_false_positive(verifier):
    rows = [json.loads(line) for line in
            (SHARED_DATA / "responses" / "smollm2-135m-instruct-gsm8k.jsonl").read_text().splitlines() if line]
    assert len(rows) == 120
    rewards = []
    for r in rows:
        truncated = r["finish_reason"] == "length"
        (got, _), = verifier.score(MARKER, [r["response"]], r["gold"], "{}", [truncated])
        rewards.append(got)
        # where the response states a final answer, it is the one read (or, for "the answer is
        # 10 + 3 = 13", the expression's result, where the data's reading took its first number;
        # "the answer is 1 + 10 + 1 = E.K" states none)
        if r["final_answer"] is not None:
            got_answer, how = extract_answer(r["response"], "marker", truncated)
            theirs = r["final_answer"].replace(",", "").replace("$", "").strip()
            if got_answer != theirs:  # only where the stated answer is a worked expression
                stating = [ln for ln in r["response"].splitlines() if re.search(r"answer\s*(is|:)", ln, re.I)]
                assert any("=" in ln for ln in stating), (got_answer, theirs)
    assert rewards == [r["strict_reward"] for r in rows]  # all 0: no response is right
    assert sum(r["lenient_reward"] for r in rows) == 4  # ... where whole-text parsing found 4 "right"
    # the opt-in last-number fallback credits exactly one of them, by coincidence: why it is opt-in
    fallback = [verifier.score(NUMBER, [r["response"]], r["gold"], "{}", [r["finish_reason"] == "length"])[0][0]
                for r in rows]
    assert sum(fallback) == 1
