"""An LLM judge that grades story continuations out of 10, as in the TinyStories paper (Eldan & Li, 2023).

The judge sees the story's beginning and the model's continuation, and answers with grammar, creativity,
consistency and plot scores as JSON. It speaks to a Hub model through the Inference Providers, or to any
OpenAI-compatible server (vLLM, TGI, llama.cpp, ...) through `huggingface_hub.InferenceClient`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from huggingface_hub import InferenceClient

from recipe.errors import RecipeConfigError

logger = logging.getLogger(__name__)

CRITERIA = ("grammar", "creativity", "consistency", "plot")

JUDGE_PROMPT = """In the following exercise, a student was given the beginning of a story and had to continue it. \
The exercise tests the student's command of language and creativity. The symbol *** separates the given \
beginning from the student's continuation:

{prompt}***{completion}

Assess only the part written by the student, after ***. Is it grammatically correct? Is it consistent with \
the beginning: the same characters, objects and setting? Does the student finish a sentence that *** splits \
in the middle? Does the plot make sense?

Grade the continuation from 1 to 10 for grammar, creativity, consistency with the beginning, and plot. \
Answer with only a JSON object, for example: {{"grammar": 7, "creativity": 5, "consistency": 8, "plot": 6}}"""

_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)


@dataclass
class LLMJudge:
    """Grades completions with a chat model: `model` (a Hub id) and/or `base_url` (an OpenAI-compatible server)."""

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    max_tokens: int = 200
    timeout: float | None = 120.0

    def __post_init__(self) -> None:
        if not self.model and not self.base_url:
            raise RecipeConfigError(
                "The judge needs --judge_model (a Hub model id) or --judge_base_url (an OpenAI-compatible server)."
            )

    @property
    def name(self) -> str:
        return self.model or self.base_url or ""

    def client(self) -> InferenceClient:
        if self.base_url:  # the model name, if any, goes into the request body
            return InferenceClient(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout)
        return InferenceClient(model=self.model, api_key=self.api_key, timeout=self.timeout)

    def grade_one(self, client: InferenceClient, prompt: str, completion: str) -> dict:
        """One sample's scores, plus the judge's raw answer; `error` says why scores are missing."""
        message = JUDGE_PROMPT.format(prompt=prompt, completion=completion)
        response = client.chat_completion(
            [{"role": "user", "content": message}],
            model=self.model if self.base_url else None,
            max_tokens=self.max_tokens,
        )
        answer = response.choices[0].message.content or ""
        try:
            return {**parse_scores(answer), "answer": answer}
        except ValueError as error:
            return {"error": str(error), "answer": answer}

    def grade(self, samples: Sequence[dict]) -> dict:
        """Scores per sample and their means over the samples the judge answered properly."""
        client = self.client()
        per_sample = [self.grade_one(client, s["prompt"], s["completion"]) for s in samples]
        graded = [s for s in per_sample if "error" not in s]
        if not graded:
            raise RuntimeError(
                f"The judge `{self.name}` gave no usable scores for {len(samples)} samples; its first answer was: "
                f"{per_sample[0]['answer'][:300]!r}"
            )
        if len(graded) < len(per_sample):
            logger.warning("The judge's answer could not be parsed for %d samples", len(per_sample) - len(graded))
        scores = {c: sum(s[c] for s in graded) / len(graded) for c in CRITERIA}
        return {"model": self.name, "scores": scores, "per_sample": per_sample}


def parse_scores(answer: str) -> dict[str, float]:
    """The four scores from a judge answer: a JSON object (possibly in a code fence or prose, keys in any case,
    values like 7, "7" or "7/10"), else `grammar: 7`-style lines. Raises ValueError when a score is missing."""
    for candidate in reversed(_JSON_OBJECT.findall(answer)):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            lowered = {str(k).strip().lower(): v for k, v in data.items()}
            if all(c in lowered for c in CRITERIA):
                return {c: _score(lowered[c], c) for c in CRITERIA}
    scores = {}
    for criterion in CRITERIA:
        match = re.search(rf"{criterion}\W{{0,5}}(\d+(?:\.\d+)?)", answer, re.IGNORECASE)
        if match is None:
            raise ValueError(f"no `{criterion}` score in the judge's answer")
        scores[criterion] = _score(match.group(1), criterion)
    return scores


def _score(value: object, criterion: str) -> float:
    text = str(value).strip()
    match = re.match(r"(\d+(?:\.\d+)?)(?:\s*/\s*10)?$", text)
    if match is None:
        raise ValueError(f"`{criterion}` score {text!r} is not a number out of 10")
    score = float(match.group(1))
    if not 0 <= score <= 10:
        raise ValueError(f"`{criterion}` score {score:g} is outside 0..10")
    return score
