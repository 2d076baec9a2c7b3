"""The Prompt: the one central value that searches produce, the scorer takes, files store
and the predictor runs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from autoprompt.adapter import Adapter
from autoprompt.answers import Generation
from autoprompt.data import Example, verbalizer_overlap
from autoprompt.errors import TemplateError
from autoprompt.template import (
    CHANNEL_FIELD,
    channel_layout,
    chat_wrap,
    count_triggers,
    escape_literal,
    fill_template,
    parse_template,
    remove_triggers,
    template_fields,
)

if TYPE_CHECKING:
    from autoprompt.task import Task

DEMO_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class ModelRef:
    """The model a prompt was found for."""

    name: str  # what the user named: an alias, a hub id or a path
    source: str  # what was loaded: the resolved file, folder or hub id
    kind: str  # "causal" | "masked"
    tokenizer_fingerprint: str


@dataclass(frozen=True)
class Prompt:
    """A fully specified prompt: template, triggers, instruction, demonstrations, verbalizer."""

    template: str
    verbalizer: dict[str, list[str]] | None = None  # label -> words; None: free-form answers
    trigger_ids: tuple[int, ...] = ()
    trigger_tokens: tuple[str, ...] = ()  # the text of each trigger token, for people and exports
    instruction: str = ""
    demonstrations: tuple[Example, ...] = ()
    # 0: show every demonstration; k > 0: the demonstrations are a pool and each input is shown
    # the k most similar to it (by the model's own embedding of the fields)
    demo_k: int = 0
    # with demo_k: each input is shown the nearest of every label in turn, as even a split over the
    # labels as k allows ("balanced_similar" demonstrations; a classification prompt's only)
    demo_per_label: bool = False
    chat: bool = False
    # contextual calibration (Zhao et al. 2021): each label's log-prob, normalised over the
    # labels, for a content-free input; subtracted from every input's before the argmax
    calibration: tuple[float, ...] = ()
    model: ModelRef | None = None
    fields: tuple[str, ...] = field(default=())  # the input fields it expects
    generation: Generation | None = None  # its answers are generated text (None: labels or a first token)
    # learned tensors it runs with (a soft prompt in its [T] slots, LoRA weights); None: the model as it is
    adapter: Adapter | None = None
    # noisy-channel scoring (Min et al. 2022): a label's score is the likelihood of the input after the label
    # word (the template's channel_layout), not the label word's after the input; causal LMs only
    channel: bool = False

    def __post_init__(self) -> None:
        parse_template(self.template)
        if self.generation is not None and self.verbalizer is not None:
            raise TemplateError("a prompt has labels (a verbalizer) or generates its answers, not both")
        if len(self.trigger_ids) != len(self.trigger_tokens):
            raise TemplateError("a prompt needs one text per trigger id")
        if not 0 <= self.demo_k <= len(self.demonstrations):
            raise TemplateError(f"demo_k {self.demo_k} needs 0..{len(self.demonstrations)} (the demonstrations pool)")
        if self.demo_per_label:
            self._check_per_label()
        if self.channel:
            self._check_channel()
        if self.calibration and len(self.calibration) != len(self.verbalizer or {}):
            raise TemplateError("calibration needs one value per label")
        problem = verbalizer_overlap(self.verbalizer) if isinstance(self.verbalizer, dict) else None
        if problem:
            raise TemplateError(problem)
        if self.adapter is not None and self.adapter.kind == "soft" and \
                self.adapter.settings.get("n_tokens") != self.n_trigger_slots:
            raise TemplateError(f"a soft prompt of {self.adapter.settings.get('n_tokens')} vectors needs as many "
                                f"[T] slots; the template has {self.n_trigger_slots}")

    def _check_per_label(self) -> None:
        if not self.demo_k or self.verbalizer is None:
            raise TemplateError("demonstrations per label need a pool (demo_k > 0) and labels (a verbalizer)")
        strays = sorted({d.answer for d in self.demonstrations} - set(self.verbalizer))
        if strays:
            raise TemplateError(f"demonstrations per label: the pool has answers {strays} that are not labels "
                                f"({', '.join(self.verbalizer)})")

    def _check_channel(self) -> None:
        if self.verbalizer is None or self.demo_k or self.trigger_ids or self.adapter is not None:
            raise TemplateError("a channel prompt needs labels (a verbalizer), and no triggers, demonstration pool "
                                "or adapter")
        channel_layout(self.template)  # (raises for a template of another shape)

    @classmethod
    def from_task(cls, task: Task, *, drop_triggers: bool = True) -> Prompt:
        """The task's manual prompt (its baseline); trigger slots removed unless asked."""
        template = remove_triggers(task.template) if drop_triggers else task.template
        return cls(template=template, verbalizer=task.verbalizer, fields=tuple(task.fields), generation=task.generation)

    @property
    def is_classification(self) -> bool:
        return self.verbalizer is not None

    @property
    def labels(self) -> list[str]:
        return list(self.verbalizer or {})

    @property
    def n_trigger_slots(self) -> int:
        return count_triggers(self.template)

    def channel_form(self) -> Prompt:
        """A channel prompt as the free-form prompt it is scored with: its channel layout, the label word a
        field and the input the answer; its demonstrations the same way round."""
        name = self._channel_input()
        demos = tuple(Example({CHANNEL_FIELD: self.answer_word(d.answer)}, d.fields[name], d.source)
                      for d in self.demonstrations)
        return Prompt(template=channel_layout(self.template), instruction=self.instruction, demonstrations=demos,
                      chat=self.chat, fields=(CHANNEL_FIELD,), model=self.model)

    def channel_rows(self, examples: list[Example]) -> list[Example]:
        """Each input once per label (example-major, labels in order) as its channel form scores them."""
        name = self._channel_input()
        return [Example({CHANNEL_FIELD: words[0]}, e.fields[name], e.source)
                for e in examples for words in (self.verbalizer or {}).values()]

    def _channel_input(self) -> str:
        return template_fields(self.template)[0]

    def with_triggers(self, trigger_ids: list[int], trigger_tokens: list[str]) -> Prompt:
        return replace(self, trigger_ids=tuple(trigger_ids), trigger_tokens=tuple(trigger_tokens))

    def showing(self, demonstrations: tuple[Example, ...]) -> Prompt:
        """The prompt with these demonstrations shown to every input (no pool to choose from)."""
        return replace(self, demonstrations=tuple(demonstrations), demo_k=0, demo_per_label=False)

    def expanded_template(self) -> str:
        """The template with instruction and demonstrations written in (before chat wrapping)."""
        template = self.template
        instruction = escape_literal(self.instruction)
        demos = escape_literal(self.demos_text())
        if "{demos}" in template:
            template = template.replace("{demos}", demos)
        elif demos:
            template = demos + DEMO_SEPARATOR + template
        if "{instruction}" in template:
            template = template.replace("{instruction}", instruction)
        elif instruction:
            template = instruction + "\n" + template
        return template

    def model_template(self, tokenizer=None) -> str:
        """The template the model really reads: instruction, demonstrations and chat wrapping
        (which needs the model's tokenizer) written in. With per-input demonstrations
        (``demo_k`` > 0) it shows the first k of the pool."""
        prompt = self.showing(self.demonstrations[: self.demo_k]) if self.demo_k else self
        template = prompt.expanded_template()
        if not prompt.chat:
            return template
        if tokenizer is None:
            raise TemplateError("a chat prompt's template needs the model's tokenizer (its chat template)")
        return chat_wrap(template, tokenizer)

    def demos_text(self) -> str:
        """The demonstrations rendered with the template itself, answers filled in."""
        demo_template = self.demo_template()
        shown = [fill_template(demo_template, demo.fields, answer=self.answer_word(demo.answer)).strip()
                 for demo in self.demonstrations]
        return DEMO_SEPARATOR.join(shown)

    def demo_template(self) -> str:
        """The template a demonstration is written with: the prompt's own, without triggers."""
        return remove_triggers(self.template).replace("{instruction}", "").replace("{demos}", "")

    def answer_word(self, answer: str) -> str:
        """How a demonstration's answer is shown: its label's first verbalizer word."""
        return (self.verbalizer or {}).get(answer, [answer])[0] if self.verbalizer else answer
