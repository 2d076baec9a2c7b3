"""Template search spaces: what the Optuna search may choose, from a YAML file or Python.

    instruction: ["", "Is this review positive or negative?"]
    layout: ["{instruction}\\n{demos}\\n\\nReview: {text}\\nSentiment:[P]", ...]
    verbalizer: [{negative: [negative], positive: [positive]}, ...]
    demonstrations: {k: [0, 2, 4], selection: [random, balanced, similar, balanced_similar], order: [shuffled, by_label],
                     draws: 4}  # draws: how many different samples of train demonstrations the search tries
    chat: [false, true]
    calibration: [none, contextual, batch]
    triggers: [0, 5]

Every dimension is optional (a missing one keeps the task's own choice) and every list must
be non-empty. A layout may hold one [T]: where the hybrid puts its trigger slots.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprompt.data import verbalizer_overlap
from autoprompt.errors import TemplateError
from autoprompt.prompt import Prompt
from autoprompt.template import RESERVED_FIELDS, parse_template, place_triggers, template_fields

if TYPE_CHECKING:
    from autoprompt.task import Example, Task

SPACES_DIR = Path(str(files("autoprompt.builtin_spaces")))  # search/ of the repository, installed with the package
DIMENSIONS = ("instruction", "layout", "verbalizer", "demonstrations", "chat", "calibration", "triggers")
DEMO_KEYS = ("k", "selection", "order", "draws")
SELECTIONS = ("random", "balanced", "similar", "balanced_similar")
# "similar": each input is shown the k pool demonstrations nearest to it; "balanced_similar": the nearest
# of each label in turn, from a pool balanced over the labels (a task without labels: "similar")
SIMILAR_SELECTIONS = ("similar", "balanced_similar")
SIMILAR_POOL = 64  # train examples a "similar" prompt keeps to choose each input's demonstrations from
ORDERS = ("shuffled", "by_label")
# "contextual": divide out the label distribution of content-free inputs (Zhao et al. 2021); "batch": of a
# sample of train inputs (Zhou et al. 2024), the labels unread
CALIBRATIONS = ("none", "contextual", "batch")


class SpaceError(TemplateError):
    """A search space that cannot be used (exit code 2 on the command line)."""


@dataclass
class SearchSpace:
    """The choices of a template search; ``None`` dimensions take the task's own value."""

    instruction: list[str] = field(default_factory=lambda: [""])
    layout: list[str] | None = None
    verbalizer: list[dict[str, list[str]]] | None = None
    k: list[int] = field(default_factory=lambda: [0])
    selection: list[str] = field(default_factory=lambda: ["balanced"])
    order: list[str] = field(default_factory=lambda: ["shuffled"])
    draws: int = 1  # different seeded samples of demonstrations (for each k and selection) the search chooses from
    chat: list[bool] = field(default_factory=lambda: [False])
    calibration: list[str] = field(default_factory=lambda: ["none"])
    triggers: list[int] = field(default_factory=lambda: [0])
    source: str = "<python>"
    builtin: bool = False  # one of search/ (autoprompt's own)

    def for_task(self, task: Task) -> SearchSpace:
        """The space with the task's own template and verbalizer filled in, checked against it."""
        space = SearchSpace(**{**self.__dict__})
        space.layout = list(self.layout) if self.layout else [task.template]
        if task.verbalizer is not None:
            space.verbalizer = list(self.verbalizer) if self.verbalizer else [dict(task.verbalizer)]
        elif self.builtin:  # a built-in space serves free-form tasks too: calibration is for labels
            space.calibration = [c for c in self.calibration if c == "none"] or ["none"]
        space.check(task)
        if task.verbalizer is None:
            space.verbalizer = [None]  # free-form answers: one (empty) verbalizer choice
        return space

    def check(self, task: Task) -> None:
        where = self.source
        for name in ("instruction", "layout", "verbalizer", "k", "selection", "order", "chat", "calibration", "triggers"):
            values = getattr(self, name)
            if values is not None and len(values) == 0:
                raise SpaceError(f"{where}: {name} is an empty list; give at least one choice")
        for layout in self.layout or []:
            _check_layout(layout, task, where)
        labels = sorted(task.verbalizer or {})
        for n, verbalizer in enumerate(self.verbalizer or []):
            if not labels:
                raise SpaceError(f"{where}: verbalizer given, but task {task.name} has free-form answers")
            if sorted(verbalizer) != labels:
                raise SpaceError(f"{where}: verbalizer {n + 1} has labels {sorted(verbalizer)}; "
                                 f"task {task.name} has {labels}")
            problem = verbalizer_overlap(verbalizer)
            if problem:
                raise SpaceError(f"{where}: verbalizer {n + 1}: {problem}")
        for k in self.k:
            if not isinstance(k, int) or isinstance(k, bool) or k < 0:
                raise SpaceError(f"{where}: demonstrations.k must be integers >= 0, not {k!r}")
        if not isinstance(self.draws, int) or isinstance(self.draws, bool) or self.draws < 1:
            raise SpaceError(f"{where}: demonstrations.draws must be an integer >= 1, not {self.draws!r}")
        for t in self.triggers:
            if not isinstance(t, int) or isinstance(t, bool) or t < 0:
                raise SpaceError(f"{where}: triggers must be integers >= 0, not {t!r}")
        _check_choices(where, "demonstrations.selection", self.selection, SELECTIONS)
        _check_choices(where, "demonstrations.order", self.order, ORDERS)
        _check_choices(where, "calibration", self.calibration, CALIBRATIONS)
        if not all(isinstance(c, bool) for c in self.chat):
            raise SpaceError(f"{where}: chat must be a list of true/false")
        for kind in self.calibration:
            if kind != "none" and not task.verbalizer:
                raise SpaceError(f"{where}: {kind} calibration needs a classification task")

    def size(self) -> int:
        n = 1
        for values in (self.instruction, self.layout, self.verbalizer, self.k, self.selection, self.order,
                       self.chat, self.calibration):
            n *= len(values or [None])
        return n * (self.draws if any(self.k) else 1)


def _check_choices(where: str, name: str, values: list[Any], allowed: tuple[str, ...]) -> None:
    for value in values:
        if value not in allowed:
            raise SpaceError(f"{where}: {name} {value!r} is not one of: {', '.join(allowed)}")


def _check_layout(layout: Any, task: Task, where: str) -> None:
    if not isinstance(layout, str):
        raise SpaceError(f"{where}: each layout must be a string, not {type(layout).__name__}")
    try:
        parse_template(layout)
    except TemplateError as exc:
        raise SpaceError(f"{where}: layout {layout!r}: {exc}") from None
    if layout.count("[P]") != 1:
        raise SpaceError(f"{where}: layout {layout!r} needs exactly one [P] (the answer slot)")
    if layout.count("[T]") > 1:
        raise SpaceError(f"{where}: layout {layout!r} has several [T]; mark the trigger place with one")
    unknown = [f for f in template_fields(layout) if f not in task.fields and f not in RESERVED_FIELDS]
    if unknown:
        raise SpaceError(f"{where}: layout {layout!r} uses {', '.join(unknown)}, which task {task.name} lacks "
                         f"(its fields: {', '.join(task.fields)})")
    missing = [f for f in task.fields if f not in template_fields(layout)]
    if missing:
        raise SpaceError(f"{where}: layout {layout!r} leaves out the task's field(s) {', '.join(missing)}")


def load_space(spec: str | os.PathLike) -> SearchSpace:
    """A space from a YAML file, or by name from search/ (``sentiment`` -> search/sentiment.yaml)."""
    import yaml

    path = Path(spec)
    if not path.exists() and not str(spec).endswith((".yaml", ".yml")) and (SPACES_DIR / f"{spec}.yaml").exists():
        path = SPACES_DIR / f"{spec}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))) if SPACES_DIR.is_dir() else "none"
        raise SpaceError(f"{spec}: no such search space file (built-in spaces: {names})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        where = f"; {context} from line {start.line + 1}" if context and start is not None else ""
        raise SpaceError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', None) or exc}{where})") from None
    except UnicodeDecodeError:
        raise SpaceError(f"{path}: not UTF-8 text") from None
    space = space_from_dict(data if data is not None else {}, source=str(path))
    space.builtin = path.resolve().parent == SPACES_DIR.resolve()
    return space


def space_from_dict(data: Any, *, source: str = "<dict>") -> SearchSpace:
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: a search space is a mapping of dimensions ({', '.join(DIMENSIONS)})")
    unknown = sorted(set(map(str, data)) - set(DIMENSIONS))
    if unknown:
        raise SpaceError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(DIMENSIONS)}")
    space = SearchSpace(source=source)
    for name in ("instruction", "layout", "verbalizer", "chat", "calibration", "triggers"):
        if name in data:
            setattr(space, name, _as_list(data[name], name, source))
    if "instruction" in data and not all(isinstance(i, str) for i in space.instruction):
        raise SpaceError(f"{source}: each instruction must be a string (use \"\" for none)")
    for n, verbalizer in enumerate(space.verbalizer or []):
        if not isinstance(verbalizer, dict) or len(verbalizer) < 2:
            raise SpaceError(f"{source}: verbalizer {n + 1} must map at least two labels to words")
        space.verbalizer[n] = {str(label): _words(words, label, source) for label, words in verbalizer.items()}
    demos = data.get("demonstrations")
    if demos is not None:
        if not isinstance(demos, dict):
            raise SpaceError(f"{source}: demonstrations must be a mapping with {', '.join(DEMO_KEYS)}")
        unknown = sorted(set(map(str, demos)) - set(DEMO_KEYS))
        if unknown:
            raise SpaceError(f"{source}: unknown demonstrations key(s) {', '.join(unknown)}; known: {', '.join(DEMO_KEYS)}")
        if "draws" in demos:
            space.draws = demos["draws"]
        for name in ("k", "selection", "order"):
            if name in demos:
                setattr(space, name, _as_list(demos[name], f"demonstrations.{name}", source))
    return space


def _as_list(value: Any, name: str, source: str) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpaceError(f"{source}: {name} is an empty list; give at least one choice")
    return values


def _words(words: Any, label: Any, source: str) -> list[str]:
    words = words if isinstance(words, list) else [words]
    if not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise SpaceError(f"{source}: label {label!r} needs one or more non-empty words")
    return list(words)


# --- a choice of every dimension -> a Prompt ------------------------------------------------

@dataclass(frozen=True)
class Choice:
    """One point of the space, as indices and values (what an Optuna trial holds)."""

    instruction: int = 0
    layout: int = 0
    verbalizer: int = 0
    k: int = 0
    selection: str = "balanced"
    order: str = "shuffled"
    chat: bool = False
    calibration: str = "none"
    draw: int = 0  # which seeded sample of demonstrations (0: the run seed's own)
    channel: bool = False  # the prompt scored the noisy-channel way round (an ensemble's partner, not a trial's)

    @classmethod
    def from_params(cls, params: dict[str, Any], space: SearchSpace) -> Choice:
        fixed = {"instruction": 0, "layout": 0, "verbalizer": 0, "k": space.k[0], "selection": space.selection[0],
                 "order": space.order[0], "chat": space.chat[0], "calibration": space.calibration[0], "draw": 0}
        return cls(**{**fixed, **params})


def prompt_for(choice: Choice, space: SearchSpace, task: Task, *, seed: int, n_triggers: int = 0) -> Prompt:
    """The prompt a choice stands for (calibration not yet measured: it needs the model)."""
    layout = place_triggers(space.layout[choice.layout], n_triggers)
    demo_k, per_label = 0, False
    labels = list(task.verbalizer or {})
    seed = seed if not choice.draw else f"{seed}-draw{choice.draw}"  # draw 0: the demonstrations runs always had
    if choice.k and choice.selection in SIMILAR_SELECTIONS:  # a pool; each input gets its k nearest at scoring time
        per_label = choice.selection == "balanced_similar" and bool(labels)
        demos = similar_pool(task.examples("train"), labels if per_label else [], seed=seed)
        demo_k = min(choice.k, len(demos))
    else:
        demos = pick_demonstrations(task.examples("train"), choice.k, choice.selection, choice.order,
                                    labels=labels, seed=seed) if choice.k else []
    return Prompt(template=layout, verbalizer=space.verbalizer[choice.verbalizer] if task.verbalizer else None,
                  instruction=space.instruction[choice.instruction], demonstrations=tuple(demos), demo_k=demo_k,
                  demo_per_label=per_label, chat=choice.chat, fields=tuple(task.fields), generation=task.generation,
                  channel=choice.channel)


def similar_pool(train: list[Example], labels: list[str], *, seed: int | str) -> list[Example]:
    """The SIMILAR_POOL train examples a "similar" prompt chooses from: a sample, or (``labels``) one
    balanced over them, of train examples with one of those labels."""
    if not labels:
        return random.Random(f"{seed}-similar-pool").sample(train, min(SIMILAR_POOL, len(train)))
    labelled = [e for e in train if e.answer in labels]
    return pick_demonstrations(labelled, SIMILAR_POOL, "balanced", "shuffled", labels=labels, seed=seed)


def pick_demonstrations(train: list[Example], k: int, selection: str, order: str, *, labels: list[str],
                        seed: int | str) -> list[Example]:
    """k demonstrations from the train split: ``random``, or ``balanced`` (labels in turn);
    ``shuffled`` order, or ``by_label`` (grouped by label). Same arguments, same demos."""
    rng = random.Random(f"{seed}-{k}-{selection}")
    if selection == "balanced" and labels:
        pools = {label: [e for e in train if e.answer == label] for label in labels}
        for pool in pools.values():
            rng.shuffle(pool)
        demos, i = [], 0
        while len(demos) < min(k, len(train)):
            pool = pools[labels[i % len(labels)]]
            if pool:
                demos.append(pool.pop())
            i += 1
            if not any(pools.values()):
                break
    else:
        demos = rng.sample(train, min(k, len(train)))
    if order == "by_label" and labels:
        demos.sort(key=lambda e: labels.index(e.answer) if e.answer in labels else len(labels))
    else:
        random.Random(f"{seed}-{k}-{selection}-order").shuffle(demos)
    return demos
