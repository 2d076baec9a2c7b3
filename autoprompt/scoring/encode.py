"""Prompts rendered to token ids: the template the model reads, each example's ids with its slot
positions, and the label words' ids as the answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoprompt.errors import InputTooLong, TemplateError
from autoprompt.scoring.caches import Caches
from autoprompt.scoring.demos import nearest_demonstrations
from autoprompt.scoring.endings import END
from autoprompt.template import Encoded

if TYPE_CHECKING:
    from autoprompt.data import Example
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt


def render_template(model: LanguageModel, prompt: Prompt) -> str:
    """The template the model really reads: instruction, demos and chat wrapping written in.
    (With per-input demonstrations, ``demo_k`` > 0, it shows the first k of the pool.)"""
    return prompt.model_template(model.tokenizer)


def encode_examples(model: LanguageModel, prompt: Prompt, examples: list[Example],
                    caches: Caches | None = None) -> list[Encoded]:
    """Token ids of each example under the prompt (triggers in place, answer excluded)."""
    if prompt.adapter is not None and model.adapter is not prompt.adapter:  # its [T] ids would read the vocabulary
        raise TemplateError(f"this prompt runs with its {prompt.adapter.kind} adapter: score it with evaluate() or "
                            "load_prompt(path), which put the adapter on the model")
    if prompt.demo_k:  # each input with its own nearest demonstrations
        chosen = nearest_demonstrations(model, prompt, examples, caches)
        templates = [render_template(model, prompt.showing(d)) for d in chosen]
    else:
        templates = [render_template(model, prompt)] * len(examples)
    out = []
    for example, template in zip(examples, templates, strict=True):
        try:
            out.append(model.renderer.render(template, example.fields, list(prompt.trigger_ids)))
        except TemplateError as exc:
            where = f"{example.source}: " if example.source else ""
            raise type(exc)(f"{where}{exc}") from None
    return out


def label_word_ids(model: LanguageModel, prompt: Prompt) -> list[list[list[int]]]:
    """Token ids of every label word, [label][word] -> ids, as the answer at [P]."""
    template = render_template(model, prompt)
    ids = [[model.renderer.answer_ids(w, template) for w in words] for words in (prompt.verbalizer or {}).values()]
    for label, words, word_ids in zip(prompt.labels, prompt.verbalizer.values(), ids, strict=False):
        for word, token_ids in zip(words, word_ids, strict=False):
            if not token_ids:
                raise TemplateError(f"label {label!r}: the word {word!r} gives no tokens")
            if not model.is_causal and len(token_ids) != 1:
                pieces = model.tokenizer.convert_ids_to_tokens(token_ids)
                raise TemplateError(f"label {label!r}: the word {word!r} is {len(token_ids)} tokens {pieces} "
                                    f"for {model.name}; a masked LM needs single-token label words")
    owner: dict[tuple[int, ...], str] = {}
    for label, words, word_ids in zip(prompt.labels, prompt.verbalizer.values(), ids, strict=False):
        for word, token_ids in zip(words, word_ids, strict=False):
            other = owner.setdefault(tuple(token_ids), label)
            if other != label:  # e.g. "good" and " good": the same tokens as the answer
                raise TemplateError(f"labels {other!r} and {label!r} both answer with the tokens of {word!r} for "
                                    f"{model.name}: no prompt can tell those labels apart")
    return ids


def target_ids(model: LanguageModel, prompt: Prompt, examples: list[Example], *, end: bool = False) -> list[list[int]]:
    """Token ids of each example's free-form target as the answer at [P] (a masked LM: its first).
    ``end``: followed by ``END``, where a likelihood reads the probability that the answer ends there (a
    newline, a stop string, the end of text: ``end_tokens``), so it also rewards stopping where the
    answer ends."""
    template = render_template(model, prompt)
    stop = [END] if end and model.is_causal else []
    targets = []
    for example in examples:
        target = model.renderer.answer_ids(example.answer or "", template)
        if not target:
            raise TemplateError(f"{example.source}: empty target")
        target = target + stop
        if model.max_length is not None and len(target) >= model.max_length:
            raise InputTooLong(f"{example.source}: the answer is {len(target)} tokens; the model reads at most "
                               f"{model.max_length} with its prompt")
        targets.append(target if model.is_causal else target[:1])  # a masked LM fills one slot
    return targets
