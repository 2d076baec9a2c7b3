"""Template parsing (pure) and rendering to token ids with the positions of the slots.

Syntax (see DESIGN.md): ``{field}`` an input field, ``[T]`` a trigger slot, ``[P]`` the
answer slot, ``{{``/``}}`` literal braces, anything else literal text.

Whitespace rule, the same for every tokenizer: spaces written before a field or the answer
move into that piece, so ``"Review: {text}"`` tokenizes the text as ``" great movie"`` the
way the model saw it in pre-training. Trigger tokens carry their own spacing, so spaces
next to ``[T]`` are dropped. Label words and targets are written bare (``positive``); the
answer gets one leading space unless it follows a newline or the start of a chat turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from autoprompt.errors import InputTooLong, TemplateError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

RESERVED_FIELDS = ("instruction", "demos")
_TOKEN_RE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|\[T\]|\[P\]|[{}]")


@dataclass(frozen=True)
class Segment:
    kind: str  # "text" | "field" | "trigger" | "answer"
    value: str = ""  # the literal text, or the field name


@dataclass(frozen=True)
class Encoded:
    """One example rendered to ids. ``answer_position`` is the position whose output
    predicts the answer: the last prompt token for a causal LM, the mask for a masked LM."""

    input_ids: list[int]
    trigger_positions: list[int]
    answer_position: int


@lru_cache(maxsize=1024)
def parse_template(template: str) -> tuple[Segment, ...]:
    """Split a template into segments; raises TemplateError on bad syntax."""
    segments: list[Segment] = []
    text: list[str] = []
    pos = 0

    def flush() -> None:
        if "".join(text):
            segments.append(Segment("text", "".join(text)))
        text.clear()

    for match in _TOKEN_RE.finditer(template):
        text.append(template[pos : match.start()])
        pos = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            text.append(token[0])
        elif token in ("{", "}"):
            raise TemplateError(
                f"template {template!r}: unbalanced {token!r} at column {match.start() + 1} "
                "(write {{ or }} for a literal brace; fields look like {text})"
            )
        else:
            flush()
            if match.group(1):
                segments.append(Segment("field", match.group(1)))
            else:
                segments.append(Segment("trigger" if token == "[T]" else "answer"))
    text.append(template[pos:])
    flush()
    n_answers = sum(s.kind == "answer" for s in segments)
    if n_answers != 1:
        what = "has no [P] answer slot" if n_answers == 0 else f"has {n_answers} [P] slots"
        raise TemplateError(f"template {template!r} {what}; it needs exactly one")
    return tuple(segments)


CHANNEL_FIELD = "label_word"  # the field a channel layout shows the label word in


def channel_layout(template: str) -> str:
    """The noisy-channel layout of a one-input template (Min et al. 2022): the line that asks for the answer
    first, with the label word filled in, and the input last, as the answer the model's likelihood is read of:
    ``Review: {text}\nSentiment:[P]`` -> ``Sentiment: {label_word}\nReview:[P]``. Raises TemplateError for a
    template of another shape (more inputs, triggers, text after [P] or between the input and [P] missing)."""
    segments = parse_template(template)
    inputs = [i for i, s in enumerate(segments) if s.kind == "field" and s.value not in RESERVED_FIELDS]
    tail = segments[inputs[0] + 1:] if len(inputs) == 1 else ()
    if len(inputs) != 1 or [s.kind for s in tail] != ["text", "answer"] or any(s.kind == "trigger" for s in segments):
        raise TemplateError(f"template {template!r}: a channel prompt needs one input field, then text, then [P] "
                            "at the end, and no triggers")
    head = segments[:inputs[0]]
    before = "".join(escape_literal(s.value) if s.kind == "text" else f"{{{s.value}}}" for s in head)
    cut = before.rfind("\n") + 1 if head and head[-1].kind == "text" else len(before)  # the input's own line
    ask = tail[0].value.strip()
    return (before[:cut] + escape_literal(f"{ask} " if ask else "") + f"{{{CHANNEL_FIELD}}}\n"
            + before[cut:].rstrip(" ") + "[P]")


def template_fields(template: str) -> list[str]:
    """Input fields a template uses, in order, without the reserved ones."""
    names = [s.value for s in parse_template(template) if s.kind == "field"]
    return [n for n in dict.fromkeys(names) if n not in RESERVED_FIELDS]


def count_triggers(template: str) -> int:
    return sum(s.kind == "trigger" for s in parse_template(template))


def remove_triggers(template: str) -> str:
    """The template with its [T] slots (and the spaces before them) removed."""
    out = template
    while " [T]" in out:
        out = out.replace(" [T]", "")
    return out.replace("[T]", "")


def with_trigger_slots(template: str, n_triggers: int) -> str:
    """Add n [T] slots after the last field when the template has none."""
    if "[T]" in template or n_triggers <= 0:
        return template
    cut = template.rfind("}") + 1
    if cut == 0:
        cut = template.index("[P]")
    return template[:cut] + " [T]" * n_triggers + template[cut:]


def place_triggers(layout: str, n_triggers: int) -> str:
    """A layout's trigger slots: none (n = 0), n where its one [T] marks the place, else n after its
    last field."""
    if not n_triggers:
        return remove_triggers(layout)
    if "[T]" in layout:
        return layout.replace("[T]", " ".join(["[T]"] * n_triggers))
    return with_trigger_slots(layout, n_triggers)


def escape_literal(text: str) -> str:
    """Text made safe to place inside a template as a literal."""
    return text.replace("{", "{{").replace("}", "}}")


def fill_template(template: str, values: dict[str, str], *, answer: str | None = None,
                  triggers: list[str] | None = None) -> str:
    """Render a template as text: fields filled, triggers as their text, [P] as the answer.

    Spacing follows the same rule as token rendering, so ``answer=None`` gives exactly the
    text a causal LM reads before its answer."""
    out: list[str] = []
    for kind, value in text_pieces(template, triggers=triggers, answer=answer):
        if kind == "field":
            if value not in values:
                raise TemplateError(f"template field {{{value}}} has no value; given: {', '.join(sorted(values)) or 'none'}")
            out.append(values[value])
        elif kind == "text":
            out.append(value)
    return "".join(out)


def text_pieces(template: str, *, triggers: list[str] | None = None,
                answer: str | None = None) -> list[tuple[str, str]]:
    """The text a template renders to, in pieces: ("text", literal) with the spacing rule applied,
    ("field", name), and ("answer", "") where [P] is when no ``answer`` is given. Triggers are
    written as their text ("[T]" when not given); a given answer is spaced like the model reads it."""
    pieces: list[tuple[str, str]] = []
    trigger_texts = iter(triggers or [])
    segments = parse_template(template)
    for i, seg in enumerate(segments):
        if seg.kind == "text":
            pieces.append(("text", _literal_text(segments, i)))
        elif seg.kind == "field":
            pieces.append(("field", seg.value))
        elif seg.kind == "trigger":
            pieces.append(("text", next(trigger_texts, "[T]")))
        elif answer is not None:
            pieces.append(("text", spaced_answer(answer, text_before_answer(template))))
        else:
            pieces.append(("answer", ""))
    return pieces


def _literal_text(segments: tuple[Segment, ...], i: int) -> str:
    """A literal with the spaces the whitespace rule takes away from it removed."""
    value = segments[i].value
    nxt = segments[i + 1].kind if i + 1 < len(segments) else None
    if nxt in ("trigger", "answer"):
        value = value.rstrip(" ")
    if i > 0 and segments[i - 1].kind == "trigger" and not value.strip(" "):
        value = ""
    return value


def text_before_answer(template: str) -> str:
    """What decides the answer's leading space: the literal right before [P] ("" at the start)."""
    segments = parse_template(template)
    k = next(i for i, s in enumerate(segments) if s.kind == "answer")
    if k == 0:
        return ""
    return _literal_text(segments, k - 1) if segments[k - 1].kind == "text" else "x"


def spaced_answer(word: str, text_before: str) -> str:
    """A bare label word or target with the leading space its position needs."""
    return word if word[:1].isspace() else answer_prefix(text_before) + word


def answer_prefix(text_before: str) -> str:
    """The space a bare label word needs after the text before [P]."""
    return "" if not text_before or text_before.endswith("\n") else " "


class TemplateRenderer:
    """Renders Prompts' templates to token ids for one tokenizer, caching literal pieces."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, causal: bool, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.causal = causal
        self.max_length = max_length  # the model's positions: a longer input is refused, not truncated
        self._literal_cache: dict[str, list[int]] = {}
        self._field_cache: dict[str, list[int]] = {}
        self.prefix_ids, self.suffix_ids = _special_wrapping(tokenizer)
        if causal:
            self.suffix_ids = []  # nothing may follow the answer slot
        elif tokenizer.mask_token_id is None:
            raise TemplateError("this masked LM's tokenizer has no mask token for [P]")

    def literal_ids(self, text: str) -> list[int]:
        ids = self._literal_cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            self._literal_cache[text] = ids
        return ids

    def field_ids(self, text: str) -> list[int]:
        ids = self._field_cache.get(text)
        if ids is None:
            # special-token text inside data stays text: no prompt injection of <|im_start|> etc.
            ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []
            if len(self._field_cache) > 200_000:
                self._field_cache.clear()
            self._field_cache[text] = ids
        return ids

    def answer_ids(self, word: str, template: str) -> list[int]:
        """Token ids of a label word or target as the answer of ``template``."""
        return self.literal_ids(spaced_answer(word, text_before_answer(template)))

    def render(self, template: str, fields: dict[str, str], trigger_ids: list[int] = ()) -> Encoded:
        """Token ids of one example with the slot positions (the answer itself excluded)."""
        segments = parse_template(template)
        if self.causal and segments[-1].kind != "answer":
            raise TemplateError(f"template {template!r}: [P] must end the template for a causal LM")
        n_slots = sum(s.kind == "trigger" for s in segments)
        if n_slots != len(trigger_ids):
            raise TemplateError(f"template {template!r} has {n_slots} [T] slots but {len(trigger_ids)} trigger tokens were given")
        ids = list(self.prefix_ids)
        trigger_positions: list[int] = []
        answer_position = -1
        triggers = iter(trigger_ids)
        carry = ""  # spaces moved from a literal into the next field
        for i, seg in enumerate(segments):
            nxt = segments[i + 1].kind if i + 1 < len(segments) else None
            if seg.kind == "text":
                value = _literal_text(segments, i)
                if nxt == "field":
                    stripped = value.rstrip(" ")
                    carry, value = value[len(stripped):], stripped
                ids += self.literal_ids(value)
            elif seg.kind == "field":
                if seg.value not in fields:
                    raise TemplateError(f"template field {{{seg.value}}} has no value; fields are: {', '.join(sorted(fields)) or 'none'}")
                ids += self.field_ids(carry + fields[seg.value])
                carry = ""
            elif seg.kind == "trigger":
                trigger_positions.append(len(ids))
                ids.append(next(triggers))
            elif self.causal:
                answer_position = len(ids) - 1
            else:
                answer_position = len(ids)
                ids.append(self.tokenizer.mask_token_id)
        ids += self.suffix_ids
        if self.max_length is not None and len(ids) > self.max_length:
            raise InputTooLong(f"the input is {len(ids)} tokens with its prompt; the model reads at most {self.max_length}")
        if answer_position < 0:
            raise TemplateError(f"template {template!r} renders no token before [P]; a causal LM needs some context")
        return Encoded(ids, trigger_positions, answer_position)


def _special_wrapping(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special ids a tokenizer puts before and after a text ([CLS]/[SEP], BOS...)."""
    bare = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello world", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


_CHAT_SENTINEL = "\x00AUTOPROMPT_CONTENT\x00"


def chat_wrap(template: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """The template inside the model's chat template: the part before [P] is the user turn,
    the answer is the start of the assistant turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError("chat wrapping was asked for, but this tokenizer has no chat template")
    segments = parse_template(template)
    if segments[-1].kind != "answer":
        raise TemplateError(f"template {template!r}: chat wrapping needs [P] at the end")
    body = template[: template.rindex("[P]")].rstrip(" ")
    wrapped = tokenizer.apply_chat_template(
        [{"role": "user", "content": _CHAT_SENTINEL}], tokenize=False, add_generation_prompt=True
    )
    before, _, after = wrapped.partition(_CHAT_SENTINEL)
    return escape_literal(before) + body + escape_literal(after) + "[P]"
