"""The final answer of a response, taken as a grader would, before math-verify compares it with the gold.

Handing math-verify the whole response lets it take whatever expression comes last: in rambling or
truncated text that is a false positive waiting to happen ("115 * 2" read as 230 against a gold 230,
seen on SmolLM2-135M and GSM8K). So the answer is extracted first, by the dataset's style:

- "boxed" (MATH, AIME, AMC, ...): the last `\\boxed{...}` (or `\\fbox{...}`), nested braces allowed.
- "marker" (GSM8K's default): the last `\\boxed{...}`, else the last `#### x`, else the last "answer is x".
- "last_number": as "marker", else, in a response that ended by itself, the last number in it. A
  response cut at max_tokens never gets this fallback: its last number is wherever the text stopped.
  Opt-in: on the 120 real SmolLM2-135M responses to GSM8K in ../shared/data/responses it credits one
  rambling response whose last number happens to be the gold (none of the 120 is right).

Numbers are normalised as a grader reads them: thousands separators and currency signs dropped
("$1,000" is 1000), a trailing period or unit word ignored.
"""

from __future__ import annotations

import re

from pipeline.data import parse_gold

STYLES = ("boxed", "marker", "last_number")

_PLAIN = r"-?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"  # 42, -3, $1,000.50 (not the "- 5" of "10 - 5")
_NUMBER = _PLAIN + r"(?:\s?/\s?\d+)?"  # ... or a fraction 3/4
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)", re.IGNORECASE)  # "the answer is 42", "Answer: 42"
_LEADING_NUMBER = re.compile(r"[\s:=*]*(" + _NUMBER + r")(?!\d|[,./]\d)")  # whole: not the 1 of 13
_MARKER = re.compile(r"####\s*(" + _PLAIN + r")")  # GSM8K's '#### 42' (in '#### 5110 / 1 = 5' that is 5110)
_ANY_NUMBER = re.compile(_NUMBER)


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} or \\fbox{...}, braces balanced; None if there is none
    (or it is never closed, as in a response cut mid-answer)."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def normalise_number(s: str) -> str:
    """'$1,000.50' -> '1000.50'; '3 / 4' -> '3/4'."""
    return re.sub(r"[\s$,]", "", s)


def extract_answer(text: str, style: str, truncated: bool = False) -> tuple[str | None, str]:
    """(the final answer or None, where it came from: boxed | marker | answer_is | last_number | none)."""
    if style not in STYLES:
        raise ValueError(f"unknown answer style {style!r}; one of {STYLES}")
    boxed = last_boxed(text)
    if boxed is not None:
        plain = re.sub(r"\\\$|\\[,!; ]", "", boxed)  # LaTeX \$ and spacing inside a boxed number
        return (normalise_number(plain) if re.fullmatch(_NUMBER, plain) else boxed), "boxed"
    if style == "boxed":
        return None, "none"
    found = _MARKER.findall(text)
    if found:
        return normalise_number(found[-1]), "marker"
    stated = _answer_is(text)
    if stated is not None:
        return stated, "answer_is"
    if style == "last_number" and not truncated:
        numbers = _ANY_NUMBER.findall(text)
        if numbers:
            return normalise_number(numbers[-1]), "last_number"
    return None, "none"


def _answer_is(text: str) -> str | None:
    """The number after the last "answer is" / "answer:" that states one, within its line or sentence; if that
    clause is a worked expression ("the answer is 10 + 3 = 13"), its result after the last '='."""
    for mark in reversed(list(_ANSWER_IS.finditer(text))):  # the last one that states a number
        clause = re.split(r"\n|\.\s", text[mark.end():], maxsplit=1)[0]
        if "=" in clause:
            clause = clause.rsplit("=", 1)[1]
        m = _LEADING_NUMBER.match(clause)
        if m:
            return normalise_number(m.group(1))
    return None


def gold_answer(answer: str) -> str:
    """A dataset's gold answer as math-verify should read it: GSM8K's worked solution ending in
    '#### 42' gives '42'; thousands separators dropped."""
    answer = parse_gold(answer)
    return normalise_number(answer) if re.fullmatch(_NUMBER, answer) else answer
