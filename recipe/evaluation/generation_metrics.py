"""Reference-free metrics of generated stories: diversity, repetition, length, EOS, and prompt adherence.

The `evaluate` library has no offline implementation of these: distinct-n exists only as community metric
scripts on the Hub (e.g. `lsy641/distinct`) and `evaluate.load` downloads every script from the Hub, which
fails offline. They are a few lines each, so they are computed here, on lowercase word tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

# Function words and story filler that say nothing about who, what or where a story is about.
_STOPWORD_LIST = """
    a an the and or but nor so yet if then than that this these those there here where when while who whom whose
    which what why how i me my mine we us our ours you your yours he him his she her hers it its they them their
    theirs one some any all each every no not none is am are was were be been being do does did done have has had
    having can could will would shall should may might must to of in on at by for with from into onto over under
    about as up down out off very too also just only more most much many such own same other again once upon time
    day there's named called little lived live
"""
STOPWORDS = frozenset(_STOPWORD_LIST.split())

# Openings that almost every TinyStories prompt shares; removed before picking content words.
BOILERPLATE = (
    "once upon a time",
    "one day",
    "there was",
    "there were",
    "there lived",
    "a long time ago",
    "the end",
)


def words(text: str) -> list[str]:
    """Lowercase word tokens; punctuation is dropped, apostrophes inside words are kept."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over total n-grams across all texts (Li et al., 2016); n-grams never cross texts."""
    grams = [gram for text in texts for gram in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of the text's n-grams that repeat an earlier n-gram of the same text (0: no loops)."""
    grams = ngrams(words(text), n)
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def stem(word: str) -> str:
    """Light normalisation so `cats`, `cat's` and `cat` (or `stories` and `story`) count as one word."""
    if word.endswith("'s"):
        word = word[:-2]
    word = word.rstrip("'")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """Stemmed words of a text after removing story boilerplate, stopwords and numbers."""
    lowered = " ".join(words(text))
    for phrase in BOILERPLATE:
        lowered = re.sub(rf"\b{phrase}\b", " ", lowered)
    return {stem(word) for word in lowered.split() if word not in STOPWORDS and not word.isdigit()}


def prompt_adherence(prompt: str, completion: str) -> float:
    """How much of what the prompt is about reappears in the continuation, in [0, 1].

    Method: the prompt's content words are its lowercase word tokens (punctuation stripped) after removing
    story boilerplate ("once upon a time", "one day", "there was", ...) and a small stopword list (articles,
    pronouns, auxiliaries, prepositions, filler such as "little" or "named"); what is left is mostly the
    characters, objects and setting ("cat", "fly"; "brave", "knight"; "pirate", "ship"). Prompt and
    continuation words are stemmed lightly (possessive 's and regular plurals removed). The score is the
    share of the prompt's content words that occur in the continuation: 1.0 when every one is picked up,
    0.0 when the story wanders off. Irregular forms ("fly" -> "flew") do not match, so a continuation that
    stays on topic rarely scores 1.0. A prompt with no content words (just "Once upon a time") constrains
    nothing and scores 1.0.
    """
    wanted = content_words(prompt)
    if not wanted:
        return 1.0
    seen = {stem(word) for word in words(completion)}
    return len(wanted & seen) / len(wanted)


def generation_metrics(samples: Sequence[dict], repetition_n: int = 3) -> dict[str, float]:
    """Aggregate metrics over completion records ({prompt, completion, num_new_tokens, ended_with_eos}).

    Distinct-n is computed over all completions together; repetition rate and prompt adherence are
    averaged over samples.
    """
    if not samples:
        raise ValueError("No completions to measure: give at least one prompt and num_samples >= 1.")
    completions = [sample["completion"] for sample in samples]
    count = len(samples)
    return {
        "distinct_1": distinct_n(completions, 1),
        "distinct_2": distinct_n(completions, 2),
        "distinct_3": distinct_n(completions, 3),
        "repetition_rate": sum(repetition_rate(text, repetition_n) for text in completions) / count,
        "mean_length_tokens": sum(sample["num_new_tokens"] for sample in samples) / count,
        "eos_share": sum(bool(sample["ended_with_eos"]) for sample in samples) / count,
        "prompt_adherence": sum(prompt_adherence(s["prompt"], s["completion"]) for s in samples) / count,
    }


def sample_metrics(sample: dict, repetition_n: int = 3) -> dict[str, float]:
    """The per-sample metrics stored next to each completion."""
    return {
        "prompt_adherence": prompt_adherence(sample["prompt"], sample["completion"]),
        "repetition_rate": repetition_rate(sample["completion"], repetition_n),
    }
