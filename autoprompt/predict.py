"""Production use of a prompt file: ``load_prompt(path).predict(inputs)``."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from autoprompt.data import Example
from autoprompt.ensemble import Ensemble, label_probs, mean_answer_probs, mean_probs, vote
from autoprompt.errors import ModelError, PromptFileError, TemplateError
from autoprompt.models import LanguageModel, load_model
from autoprompt.models.adapters import bind
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import PromptFile, read_prompt_file, save_prompt_file
from autoprompt.scoring import (
    Caches,
    answer_words,
    generate,
    nearest_demonstrations,
    render_template,
    score_labels,
    score_targets,
)
from autoprompt.template import fill_template

log = logging.getLogger(__name__)

Input = str | dict[str, Any]


class Predictor:
    """A prompt (or an ensemble of prompts) bound to its model, ready to predict."""

    def __init__(self, prompt: Prompt | Ensemble, model: LanguageModel, *, info: PromptFile | None = None) -> None:
        self.prompt = prompt
        self.model = model
        self.info = info
        members = prompt.members if isinstance(prompt, Ensemble) else (prompt,)
        # each member: the model with its adapter and the prompt it scores, and its own caches (the
        # demonstrations' KV cache, the "similar" pool's embeddings)
        self._members = [(bind(model, m), Caches()) for m in members]

    @property
    def labels(self) -> list[str]:
        return self.prompt.labels

    def predict(self, inputs: Input | list[Input]) -> str | list[str]:
        """The predicted label (or answer) for one input or a list of inputs."""
        single = not isinstance(inputs, list)
        examples = self._examples(inputs)
        if self.prompt.is_classification:
            out = [self.labels[k] for k in self._label_scores(examples).argmax(axis=1)]
        elif self.prompt.generation is not None:  # the answer the model generates (an ensemble's vote)
            answers = [generate(model, prompt, examples, caches=caches) for (model, prompt), caches in self._members]
            out = answers[0] if len(answers) == 1 else vote(answers, self.prompt.generation.normalize)
        elif len(self._members) > 1:  # a first-token ensemble: the likeliest word of its members' mean
            scored = [answer_words(model, prompt, [_with_answer(e) for e in examples], caches=caches)[3:]
                      for (model, prompt), caches in self._members]
            out = [next(iter(w)) for w in mean_answer_probs([w for w, _ in scored], [p for _, p in scored])]
        else:
            (model, prompt), caches = self._members[0]
            _, _, top = score_targets(model, prompt, [_with_answer(e) for e in examples], caches=caches)
            out = [model.tokenizer.decode([t]).strip() for t in top]
        return out[0] if single else out

    def predict_proba(self, inputs: Input | list[Input]) -> dict[str, float] | list[dict[str, float]]:
        """Probability of each label, normalised over the labels, for one input or a list (an ensemble: the
        mean of its members')."""
        if not self.prompt.is_classification:
            raise TemplateError("predict_proba needs a classification prompt (one with labels); this one "
                                + ("generates its answers: use predict" if self.prompt.generation else
                                   "answers with a free-form word: use predict"))
        single = not isinstance(inputs, list)
        probs = label_probs(self._label_scores(self._examples(inputs)))
        out = [dict(zip(self.labels, map(float, row), strict=False)) for row in probs]
        return out[0] if single else out

    def _label_scores(self, examples: list[Example]) -> np.ndarray:
        """The label log-probs [n, labels]: the prompt's, or the log of its members' mean label probabilities."""
        scores = [score_labels(model, prompt, examples, caches=caches) for (model, prompt), caches in self._members]
        return scores[0] if len(scores) == 1 else mean_probs(scores)

    def render(self, example: Input) -> str:
        """The prompt text the model reads for one input (up to the answer); an ensemble's members' in turn."""
        if isinstance(self.prompt, Ensemble):
            return "\n\n".join(f"--- member {n + 1} of {len(self.prompt.members)} ---\n" +
                                 Predictor(m, self.model).render(example) for n, m in enumerate(self.prompt.members))
        example = self._examples(example)[0]
        fields, prompt = example.fields, self.prompt
        if prompt.demo_k:  # the demonstrations this input is shown
            demos = nearest_demonstrations(self.model, prompt, [example], self._members[0][1])[0]
            prompt = prompt.showing(demos)
        template = render_template(self.model, prompt)
        answer = None if self.model.is_causal else self.model.tokenizer.mask_token
        return fill_template(template, fields, answer=answer, triggers=list(self.prompt.trigger_tokens))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the prompt as a prompt file (atomically), with what is known of it (task, metrics, search)."""
        info = self.info or PromptFile(self.prompt)
        prompt = self.prompt.for_model(self.model.ref) if isinstance(self.prompt, Ensemble) else \
            replace(self.prompt, model=self.model.ref)
        return save_prompt_file(replace(info, prompt=prompt), path)

    def _examples(self, inputs: Input | list[Input]) -> list[Example]:
        items = inputs if isinstance(inputs, list) else [inputs]
        fields = list(self.prompt.fields)
        out = []
        for n, item in enumerate(items):
            if isinstance(item, str):
                if len(fields) != 1:
                    raise TemplateError(f"input {n}: a plain string needs a one-field prompt; this one takes "
                                        f"{', '.join(fields) or 'unknown fields'} (pass a dict)")
                item = {fields[0]: item}
            if not isinstance(item, dict):
                raise TemplateError(f"input {n}: expected a string or a dict of fields, got {type(item).__name__}")
            missing = [f for f in fields if f not in item]
            if missing:
                raise TemplateError(f"input {n}: missing field(s) {', '.join(missing)}; the prompt takes {', '.join(fields)}")
            out.append(Example(fields={k: str(v) for k, v in item.items()}, answer=None, source=f"input {n}"))
        return out


def _with_answer(example: Example) -> Example:
    # score_targets needs some target; only the top-1 token at [P] is used for predictions
    return Example(example.fields, "x", example.source)


def load_prompt(path: str | os.PathLike, *, model: str | LanguageModel | None = None, device: str | None = None,
                dtype: str | None = None, allow_tokenizer_mismatch: bool = False,
                trust_remote_code: bool = False) -> Predictor:
    """Load a prompt file and its model; returns a Predictor.

    ``model`` overrides the model the file names (a name, a path or a loaded model); its
    tokenizer must match the file's fingerprint unless ``allow_tokenizer_mismatch``."""
    info = read_prompt_file(path)
    ref = info.prompt.model
    if isinstance(model, LanguageModel):
        lm = model
    else:
        lm = load_model(model or ref.name, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if lm.kind != ref.kind:
        raise PromptFileError(f"{path}: the prompt was made for a {ref.kind} LM, but {lm.name} is {lm.kind}")
    if lm.tokenizer_fingerprint != ref.tokenizer_fingerprint:
        message = (f"{path}: the tokenizer of {lm.name} ({lm.tokenizer_fingerprint}) is not the one the prompt "
                   f"was made for ({ref.name}, {ref.tokenizer_fingerprint}); trigger ids would mean other tokens")
        if not allow_tokenizer_mismatch:
            raise PromptFileError(message + " (allow_tokenizer_mismatch=True to use it anyway)")
        log.warning(message)
    members = info.prompt.members if isinstance(info.prompt, Ensemble) else (info.prompt,)
    for prompt in members:
        _check_fits(path, prompt, lm)
    try:
        return Predictor(info.prompt, lm, info=info)
    except ModelError as exc:  # the adapter's tensors do not fit the model
        raise PromptFileError(f"{path}: {exc}") from None


def _check_fits(path: str | os.PathLike, prompt: Prompt, lm: LanguageModel) -> None:
    """A prompt of the file runs on this model: its trigger ids in the vocabulary, its adapter for these weights."""
    too_big = [i for i in prompt.trigger_ids if i >= lm.vocab_size]
    if too_big:
        raise PromptFileError(f"{path}: trigger ids {too_big} are outside the vocabulary of {lm.name} "
                              f"({lm.vocab_size} tokens)")
    adapter = prompt.adapter
    if adapter is not None and adapter.base_model != lm.weights_fingerprint:
        raise PromptFileError(f"{path}: its {adapter.kind} adapter was trained on another base model (weights "
                              f"{adapter.base_model}) than {lm.name} ({lm.weights_fingerprint})")
