"""Instructions proposed by a language model (APE, Zhou et al. 2023; GEPA's reflective revisions).

A generator model reads a meta-prompt and writes one instruction. A ``train-examples`` proposal is
APE's: a handful of train examples (input -> answer) and "The instruction was"; a ``revision`` is
written from the current instruction and dev examples it gets wrong. Each proposal of a round sees its
own seeded sample of examples, so greedy decoding still gives different instructions; all of a round's
meta-prompts are generated at once (``greedy_tokens``: one batched loop over tokens). Pure functions
of their inputs and the seed: the same seed proposes the same instructions.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from autoprompt.errors import ModelError
from autoprompt.scoring.endings import ending_tokens
from autoprompt.scoring.generate import greedy_tokens

if TYPE_CHECKING:
    from autoprompt.data import Example
    from autoprompt.models import LanguageModel
    from autoprompt.task import Task

ORIGINS = ("train-examples", "revision")
SHOTS = 5  # train examples each meta-prompt shows (APE shows five)
MAX_NEW_TOKENS = 48  # an instruction is one sentence
MAX_FIELD_CHARS = 300  # a long input is clipped in the meta-prompt: the instruction is about the task, not it
MIN_CHARS, MAX_CHARS = 10, 200  # a kept instruction's length

APE_PROMPT = ("I gave a friend an instruction. Based on the instruction they produced the following "
              "input-output pairs:\n\n{pairs}\n\nThe instruction was:")
REVISION_PROMPT = ("I gave a friend this instruction: \"{current}\"\nFollowing it, they got these "
                   "input-output pairs wrong (their output, then the right one):\n\n{pairs}\n\n"
                   "A better instruction, in one sentence, was:")
CHAT_ASK = "\nWrite the instruction in one sentence."  # a chat model answers a question rather than continue


@dataclass(frozen=True)
class Proposal:
    """One proposed instruction and where it came from (``origin`` is one of ORIGINS; ``shown``: the
    sources of the examples its meta-prompt showed)."""

    instruction: str
    origin: str
    shown: tuple[str, ...] = ()


def propose_instructions(model: LanguageModel, task: Task, *, n: int, seed: int, shots: int = SHOTS,
                         current: str | None = None, mistakes: list[tuple[Example, str]] | None = None
                         ) -> list[Proposal]:
    """Up to ``n`` distinct cleaned instructions the model writes for the task, all generated in one batch:
    from train examples (APE), or, given ``current`` and ``mistakes`` (dev examples and the wrong answers
    given to them), revisions of the current instruction."""
    if not model.is_causal:
        raise ModelError(f"{model.name} is a masked LM: proposing instructions needs a causal LM (--proposer)")
    revision = current is not None
    pool = list(mistakes or []) if revision else [(e, None) for e in task.examples("train")]
    if not pool or n <= 0:
        return []
    samples = [random.Random(f"{seed}-propose-{i}").sample(pool, min(shots, len(pool))) for i in range(n)]
    inputs = [_meta_ids(model, task, sample, current) for sample in samples]
    with torch.inference_mode():
        outputs = greedy_tokens(model, inputs, MAX_NEW_TOKENS, ending_tokens(model))
    origin = "revision" if revision else "train-examples"
    proposals, seen = [], set()
    for sample, tokens in zip(samples, outputs, strict=True):
        answers = [_answer(task, e) for e, _ in sample] if task.verbalizer is None else []
        text = clean_instruction(model.tokenizer.decode(tokens, skip_special_tokens=True), answers)
        if text is not None and text.lower() not in seen:
            seen.add(text.lower())
            proposals.append(Proposal(text, origin, tuple(e.source for e, _ in sample)))
    return proposals


def meta_prompt(task: Task, sample: list[tuple[Example, str | None]], current: str | None = None) -> str:
    """The text the generator continues: APE's, or the revision's when ``current`` is given."""
    pairs = "\n\n".join(_pair(task, example, given) for example, given in sample)
    if current is None:
        return APE_PROMPT.format(pairs=pairs)
    return REVISION_PROMPT.format(current=current, pairs=pairs)


def _pair(task: Task, example: Example, given: str | None) -> str:
    fields = [(name, example.fields[name][:MAX_FIELD_CHARS]) for name in task.fields]
    text = fields[0][1] if len(fields) == 1 else "\n".join(f"{name}: {value}" for name, value in fields)
    output = _answer(task, example) if given is None else f"{given} (right: {_answer(task, example)})"
    return f"Input: {text}\nOutput: {output}"


def _answer(task: Task, example: Example) -> str:
    """What the example's answer reads as: its label's first word for a label task, else its text."""
    if task.verbalizer and example.answer in task.verbalizer:
        return task.verbalizer[example.answer][0].strip()
    return (example.answer or "").strip()


def _meta_ids(model: LanguageModel, task: Task, sample: list, current: str | None) -> list[int]:
    """The meta-prompt's ids, inside the model's chat template when it has one; examples are dropped from
    the end until it leaves room for the instruction in the model's context."""
    tokenizer = model.tokenizer
    while True:
        text = meta_prompt(task, sample, current)
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": text + CHAT_ASK}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if model.max_length is None or len(ids) + MAX_NEW_TOKENS <= model.max_length:
            return ids
        if len(sample) == 1:  # one example is already too long: keep the end, where the question is
            return ids[-max(1, model.max_length - MAX_NEW_TOKENS):]
        sample = sample[:-1]


_LEADS = re.compile(r"^(a |the )?(new |better |revised )?instruction( was| is)?\s*[:\-]?\s*", re.IGNORECASE)
_QUOTES = "\"'`*“”‘’«» "


def _loops(sentence: str) -> bool:
    """A greedy generation caught in a loop: some three words in a row come three times or more."""
    words = re.findall(r"\w+", sentence.lower())
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return any(grams.count(g) >= 3 for g in set(grams))


def clean_instruction(text: str, answers: list[str] = ()) -> str | None:
    """A generated instruction made usable: its first line and first sentence, without a leading
    "Instruction:" or quotes, capitalised, ending in punctuation; None when it is too short or too long,
    caught in a loop, or (``answers``: a generation task's answers the meta-prompt showed) names one of them verbatim."""
    lines = [line for line in text.strip().splitlines() if line.strip(_QUOTES)]
    if not lines:
        return None
    line = _LEADS.sub("", lines[0].strip(_QUOTES)).strip(_QUOTES)
    if line.lower().startswith("to "):  # APE's completions often go "to classify ..."
        line = line[3:]
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0].strip(_QUOTES)
    if not sentence:
        return None
    sentence = sentence[0].upper() + sentence[1:]
    if sentence[-1] not in ".!?:":
        sentence += "."
    if not MIN_CHARS <= len(sentence) <= MAX_CHARS or _loops(sentence):
        return None
    # one example's answer in the instruction is copying, not instructing: it would pull every answer to it
    # (a label task's label words are kept: naming the labels is what a good instruction does)
    if any(a and re.search(rf"(?<!\w){re.escape(a)}(?!\w)", sentence, re.IGNORECASE) for a in answers):
        return None
    return sentence
