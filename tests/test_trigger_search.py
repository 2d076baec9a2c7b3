"""Trigger search: a planted task it must solve, the gradient's direction, resume, modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import autoprompt
from autoprompt.gradient import trigger_gradient
from autoprompt.optimizer import optimize
from autoprompt.prompt import Prompt
from autoprompt.searches import trigger as ts
from autoprompt.searches.trigger import TriggerSearchConfig, allowed_tokens, candidate_losses
from autoprompt.task import Example, Task
from autoprompt.template import with_trigger_slots

VERBALIZER = {"negative": ["negative"], "positive": ["positive"]}
TEXTS = ["a fine film", "the plot is thin", "it moves", "what a cast", "slow and long", "i laughed",
         "a mess", "worth it"]


def make_task(template: str, answers: list[str]) -> Task:
    examples = [Example({"text": t}, a, f"planted:{i}") for i, (t, a) in enumerate(zip(TEXTS, answers, strict=True))]
    return Task(name="planted", template=template, verbalizer=VERBALIZER,
                splits={"train": examples, "dev": examples, "test": examples})


def brute_force_best(model, task: Task, loss: str) -> int:
    prompt = Prompt(template=task.template, verbalizer=task.verbalizer, fields=("text",))
    prompt = prompt.with_triggers([0], ["x"])
    allowed = allowed_tokens(model, prompt, ascii_only=True, whole_words=False)
    tokens = torch.nonzero(allowed)[:, 0].numpy()
    losses = candidate_losses(model, prompt, task.examples("train"), tokens[:, None], loss)
    return int(tokens[np.argmin(losses)])


def planted_config(**changes) -> TriggerSearchConfig:
    settings = dict(steps=4, top_k=24, grad_batch=8, eval_batch=8, dev_every=1, dev_limit=None, loss="vocab")
    return TriggerSearchConfig(**(settings | changes))


def test_search_finds_the_planted_trigger(planted_model):
    task = make_task("{text} [T][P]", ["positive"] * len(TEXTS))
    best = brute_force_best(planted_model, task, "vocab")
    prompt, state = ts.trigger_search(planted_model, task, planted_config(), progress=False)
    assert list(prompt.trigger_ids) == [best]
    assert state.best_dev == 1.0


def test_flipped_gradient_does_not_find_it(planted_model, monkeypatch):
    task = make_task("{text} [T][P]", ["positive"] * len(TEXTS))
    best = brute_force_best(planted_model, task, "vocab")
    real = ts.trigger_gradient
    monkeypatch.setattr(ts, "trigger_gradient", lambda *a, **k: -real(*a, **k))
    prompt, _ = ts.trigger_search(planted_model, task, planted_config(), progress=False)
    assert list(prompt.trigger_ids) != [best]


def test_gradient_points_to_lower_loss(causal_lm):
    """Tokens ranked best by -grad.E score a lower real loss than those ranked worst."""
    model = causal_lm
    task = make_task("{text} [T] [T] [T]\nSentiment:[P]", ["positive", "negative"] * 4)
    prompt = Prompt(template=task.template, verbalizer=VERBALIZER, fields=("text",))
    start = model.tokenizer(" the", add_special_tokens=False)["input_ids"] * 3
    prompt = prompt.with_triggers(start, [" the"] * 3)
    examples = task.examples("train")
    scores = trigger_gradient(model, prompt, examples, "vocab").cpu()
    scores[:, ~allowed_tokens(model, prompt, ascii_only=True, whole_words=False)] = float("nan")
    slot = 2
    ranked = torch.argsort(torch.nan_to_num(scores[slot], nan=-1e9), descending=True).numpy()
    n_allowed = int((~torch.isnan(scores[slot])).sum())
    top, bottom = ranked[:40], ranked[n_allowed - 40 : n_allowed]

    def swapped(tokens):
        cands = np.tile(np.asarray(start), (len(tokens), 1))
        cands[:, slot] = tokens
        return cands

    top_loss = candidate_losses(model, prompt, examples, swapped(top), "vocab").mean()
    bottom_loss = candidate_losses(model, prompt, examples, swapped(bottom), "vocab").mean()
    assert top_loss < bottom_loss


def plain_trigger_gradient(model, prompt: Prompt, examples: list[Example], loss_kind: str) -> torch.Tensor:
    """-d loss / d one-hot, [n_slots, vocab], by plain autograd through each whole sequence: no
    prefix cache, no split; right padding; the loss written out from its definition."""
    from autoprompt.scoring import encode_examples, label_word_ids

    embedding = model.hf_model.get_input_embeddings().weight
    encoded = encode_examples(model, prompt, examples)
    n_slots = len(prompt.trigger_ids)
    one_hot = torch.zeros(n_slots, model.vocab_size, device=model.device)
    one_hot[torch.arange(n_slots), torch.tensor(prompt.trigger_ids)] = 1
    one_hot.requires_grad_(True)
    width = max(len(e.input_ids) for e in encoded)
    rows, mask = [], torch.zeros(len(encoded), width, dtype=torch.long, device=model.device)
    for r, e in enumerate(encoded):
        row = [embedding[i] for i in e.input_ids] + [embedding[model.pad_id]] * (width - len(e.input_ids))
        for slot, position in enumerate(e.trigger_positions):
            row[position] = one_hot[slot] @ embedding
        rows.append(torch.stack(row))
        mask[r, : len(e.input_ids)] = 1
    logits = model.hf_model(inputs_embeds=torch.stack(rows), attention_mask=mask).logits
    at_answer = logits[torch.arange(len(encoded)), torch.tensor([e.answer_position for e in encoded])]
    log_probs = torch.log_softmax(at_answer.float(), dim=-1)  # [n, vocab]
    first_tokens = [[ids[0] for ids in words] for words in label_word_ids(model, prompt)]
    scores = torch.stack([torch.logsumexp(log_probs[:, ids], dim=1) for ids in first_tokens], dim=1)  # [n, labels]
    if loss_kind == "labels":
        scores = torch.log_softmax(scores, dim=1)
    gold = torch.tensor([prompt.labels.index(e.answer) for e in examples])
    loss = -scores[torch.arange(len(examples)), gold]
    loss.mean().backward()
    return -one_hot.grad


@pytest.mark.parametrize("loss_kind", ["labels", "vocab"])
@pytest.mark.parametrize("shared_head", [False, True], ids=["template", "instruction+demos"])
def test_trigger_gradient_equals_plain_autograd(causal_lm, loss_kind, shared_head):
    """The gradient with the prefix before the first trigger cached (and, with an instruction and
    demonstrations, their shared head cached once) is the gradient through the unsplit sequences."""
    model = causal_lm
    assert model.dtype == torch.float32
    verbalizer = {"negative": ["negative", "bad"], "positive": ["positive", "good"]}
    texts = ["a fine film", "the plot is thin and the acting is even thinner", "it moves",
             "what a cast of truly great actors", "slow"]  # different lengths: padded rows
    answers = ["positive", "negative", "positive", "positive", "negative"]
    examples = [Example({"text": t}, a, f"e{i}") for i, (t, a) in enumerate(zip(texts, answers, strict=True))]
    extra = {}
    if shared_head:
        extra = {"instruction": "Decide whether the review is positive or negative.",
                 "demonstrations": (Example({"text": "great fun"}, "positive"), Example({"text": "a dull mess"}, "negative"))}
    prompt = Prompt("Review: {text} [T] [T]\nSentiment:[P]", verbalizer, fields=("text",), **extra)
    ids = model.tokenizer(" the film", add_special_tokens=False)["input_ids"]
    prompt = prompt.with_triggers(ids[:2], ["a", "b"])
    from autoprompt.scoring import common_head, encode_examples

    encoded = encode_examples(model, prompt, examples)
    prefixes = [e.input_ids[: e.trigger_positions[0]] for e in encoded]
    assert min(len(p) for p in prefixes) > 0 and len({len(e.input_ids) for e in encoded}) > 1  # a split, padding
    assert (common_head(prefixes) > 0) == shared_head  # the demonstrations' KV cache is shared by every row
    expected = plain_trigger_gradient(model, prompt, examples, loss_kind)
    got = trigger_gradient(model, prompt, examples, loss_kind)
    assert got.shape == (2, model.vocab_size) and expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


def test_token_filter(causal_lm):
    model = causal_lm
    prompt = Prompt(template="{text} [T][P]", verbalizer=VERBALIZER, fields=("text",)).with_triggers([5], ["x"])
    mask = allowed_tokens(model, prompt, ascii_only=True, whole_words=False)
    for special in model.tokenizer.all_special_ids:
        assert not mask[special]
    for word in (" positive", " negative"):
        assert not mask[model.tokenizer(word, add_special_tokens=False)["input_ids"][0]]
    for token in torch.nonzero(mask)[:50, 0].tolist():  # what is allowed round-trips
        text = model.tokenizer.decode([token])
        assert model.tokenizer(text, add_special_tokens=False)["input_ids"] == [token]
    words = allowed_tokens(model, prompt, ascii_only=True, whole_words=True)
    assert words.sum() < mask.sum()
    assert all(model.tokenizer.decode([t]).startswith(" ") for t in torch.nonzero(words)[:50, 0].tolist())


def test_gcg_mode_and_seed(causal_lm):
    model = causal_lm
    task = make_task("{text} [T] [T]\nSentiment:[P]", ["positive", "negative"] * 4)
    cfg = planted_config(mode="gcg", n_candidates=12, steps=3, loss="labels")
    a, sa = ts.trigger_search(model, task, cfg, progress=False)
    b, sb = ts.trigger_search(model, task, cfg, progress=False)
    assert a.trigger_ids == b.trigger_ids and sa.trigger_ids == sb.trigger_ids
    assert len(a.trigger_ids) == 2


def test_mode_auto_is_gcg_for_generated_answers_and_autoprompt_for_labels(causal_lm, tmp_path: Path):
    from test_generation import code_task

    labels = Prompt.from_task(make_task("{text} [T]\nSentiment:[P]", ["positive", "negative"] * 4))
    codes = Prompt.from_task(code_task())
    assert labels.generation is None and codes.generation is not None
    default = TriggerSearchConfig()
    assert (default.mode, default.top_k, default.eval_batch) == ("auto", None, None)
    got = {name: ts.resolved(default, prompt) for name, prompt in (("labels", labels), ("codes", codes))}
    assert [(c.mode, c.top_k, c.eval_batch) for c in got.values()] == [("autoprompt", 16, 32), ("gcg", 64, 8)]
    mine = ts.resolved(TriggerSearchConfig(mode="autoprompt", eval_batch=5), codes)  # what is set stays set
    assert (mine.mode, mine.top_k, mine.eval_batch) == ("autoprompt", 16, 5)
    assert ts.resolved(TriggerSearchConfig(top_k=3), labels).top_k == 3
    # the run records what it ran with; a gcg step scores its n_candidates random swaps (all distinct here)
    result = optimize(code_task(), causal_lm, config=TriggerSearchConfig(steps=2, n_triggers=2, n_candidates=5,
                                                                          grad_batch=4, dev_every=1),
                      runs_dir=tmp_path, progress=False, confidence=0)
    saved = autoprompt.read_prompt_file(result.prompt_file)
    assert saved.search["settings"] == {"mode": "gcg", "top_k": 64, "eval_batch": 8}
    assert all(1 <= e["n_candidates"] <= 5 for e in result.history if "n_candidates" in e)


def test_resume_equals_uninterrupted(causal_lm, tmp_path: Path):
    model = causal_lm
    task = make_task("{text} [T] [T]\nSentiment:[P]", ["positive", "negative"] * 4)
    full = optimize(task, model, config=planted_config(steps=4, dev_every=2), runs_dir=tmp_path / "a", progress=False)
    half = optimize(task, model, config=planted_config(steps=2, dev_every=2), runs_dir=tmp_path / "b", progress=False)
    config = json.loads((half.run_dir / "config.json").read_text())
    config["trigger"]["steps"] = 4  # as if it had been stopped after step 2
    (half.run_dir / "config.json").write_text(json.dumps(config))
    resumed = optimize(task, model, config=planted_config(), resume=half.run_dir, progress=False)
    assert resumed.prompt.trigger_ids == full.prompt.trigger_ids
    steps = [e["step"] for e in resumed.history]
    assert steps == [0, 1, 2, 3, 4]
    saved = autoprompt.read_prompt_file(resumed.prompt_file)
    assert saved.prompt.trigger_ids == full.prompt.trigger_ids
    assert set(saved.metrics) == {"dev", "untouched", "test"}


def test_with_trigger_slots():
    assert with_trigger_slots("Review: {text}\nSentiment:[P]", 2) == "Review: {text} [T] [T]\nSentiment:[P]"
    assert with_trigger_slots("{a} [T][P]", 5) == "{a} [T][P]"
    assert with_trigger_slots("Q:[P]", 1) == "Q: [T][P]"


def test_masked_lm_path(masked_lm, tmp_path: Path):
    """The same search on a masked LM: [P] is the mask, candidates are full sequences."""
    task = make_task("{text} [T] [T] it was [P] .", ["positive", "negative"] * 4)
    result = optimize(task, masked_lm, config=planted_config(steps=2, top_k=6, loss="labels"), confidence=0, runs_dir=tmp_path,
                      progress=False)
    assert len(result.prompt.trigger_ids) == 2
    assert masked_lm.tokenizer.mask_token_id not in result.prompt.trigger_ids
    saved = autoprompt.load_prompt(result.prompt_file, model=masked_lm)
    expected = autoprompt.evaluate(masked_lm, result.prompt, task.examples("test")).predictions
    assert saved.predict(TEXTS) == expected
    assert "[MASK]" in saved.render(TEXTS[0])


def test_masked_candidates_equal_one_by_one(masked_lm):
    task = make_task("{text} [T] [T] it was [P] .", ["positive", "negative"] * 4)
    prompt = Prompt(template=task.template, verbalizer=VERBALIZER, fields=("text",)).with_triggers([30, 31], ["a", "b"])
    candidates = np.array([[30, 31], [40, 31], [30, 50]])
    together = candidate_losses(masked_lm, prompt, task.examples("train"), candidates, "vocab")
    alone = [candidate_losses(masked_lm, prompt.with_triggers(list(c), ["x", "y"]), task.examples("train"),
                              c[None, :], "vocab")[0] for c in candidates]
    np.testing.assert_allclose(together, alone, rtol=1e-5)


def test_free_form_targets(causal_lm, tmp_path: Path):
    """Fact retrieval: open-vocabulary targets, precision@1 as the dev metric."""
    facts = [("Paris", "France"), ("Rome", "Italy"), ("Berlin", "Germany"), ("Madrid", "Spain")]
    examples = [Example({"subject": s}, o, f"facts:{i}") for i, (s, o) in enumerate(facts)]
    task = Task(name="facts", template="{subject} is in[P]", metric="precision@1",
                splits={"train": examples, "dev": examples, "test": examples})
    result = optimize(task, causal_lm, config=planted_config(steps=2, n_triggers=2, top_k=5), confidence=0, holdout=0,
                      runs_dir=tmp_path, progress=False)
    assert result.prompt.template == "{subject} [T] [T] is in[P]"
    test = task.examples("test")
    # both prompts' numbers are those of a plain forward pass, one example at a time
    for prompt, metrics in ((Prompt.from_task(task), result.baseline), (result.prompt, result.metrics)):
        ranks = plain_target_ranks(causal_lm, prompt, test)
        assert metrics["test"]["precision@1"] == pytest.approx(np.mean(ranks == 0))
        assert metrics["test"]["mrr"] == pytest.approx(np.mean(1 / (ranks + 1)))
        assert metrics["test"] == pytest.approx(
            autoprompt.evaluate(causal_lm, prompt, test, metric="precision@1").metrics)
        assert metrics["dev"] == pytest.approx(metrics["test"])  # dev and test are the same examples here
        assert 0 <= metrics["test"]["precision@1"] <= metrics["test"]["mrr"] <= 1
        assert metrics["test"]["mean_target_log_prob"] < 0
    assert result.baseline["test"] != pytest.approx(result.metrics["test"])  # triggers change the scores
    # the found prompt is the best one on dev: step 0 (the initial triggers) or a later step
    dev_checks = [e["dev"] for e in result.history if "dev" in e]
    assert [e["step"] for e in result.history] == [0, 1, 2] and len(dev_checks) == 3
    assert result.metrics["dev"]["precision@1"] == pytest.approx(max(dev_checks))
    assert result.metrics["dev"]["precision@1"] >= dev_checks[0]
    assert autoprompt.read_prompt_file(result.prompt_file).metrics == result.metrics


def plain_target_ranks(model, prompt: Prompt, examples: list[Example]) -> np.ndarray:
    """The rank of each target's first token at [P], from a plain unbatched forward pass."""
    from autoprompt.scoring import encode_examples, render_template

    template = render_template(model, prompt)
    ranks = []
    for example, encoded in zip(examples, encode_examples(model, prompt, examples), strict=True):
        ids = torch.tensor([encoded.input_ids], device=model.device)
        with torch.no_grad():
            logits = model.hf_model(ids).logits[0, encoded.answer_position].float()
        first = model.renderer.answer_ids(example.answer, template)[0]
        ranks.append(int((logits > logits[first]).sum()))
    return np.array(ranks)


def test_confirm_batch_rejects_a_winner_by_chance(causal_lm, monkeypatch):
    """A candidate that wins on the evaluation batch but loses on fresh examples is not kept."""
    task = make_task("{text} [T] [T]\nSentiment:[P]", ["positive", "negative"] * 4)
    calls = []

    def fake_losses(model, prompt, examples, candidates, loss_kind, **kwargs):
        calls.append(len(candidates))
        if len(calls) % 2 == 1:  # the evaluation batch: candidate 1 looks best
            return np.array([1.0, 0.5] + [0.9] * (len(candidates) - 2))
        return np.array([1.0, 1.2])  # the confirmation: it is worse after all

    monkeypatch.setattr(ts, "candidate_losses", fake_losses)
    _, state = ts.trigger_search(causal_lm, task, planted_config(steps=2, dev_every=5), progress=False)
    assert calls[1::2] == [2, 2] and state.trigger_ids == [state.best_trigger_ids[0]] * 2
    calls.clear()
    _, state = ts.trigger_search(causal_lm, task, planted_config(steps=1, dev_every=5, confirm_batch=0), progress=False)
    assert len(calls) == 1 and state.trigger_ids != [state.best_trigger_ids[0]] * 2


def test_interrupt_keeps_the_best_prompt_so_far(causal_lm, tmp_path: Path, monkeypatch):
    """Ctrl-C during the search: the run is marked interrupted and its best prompt is written."""
    task = make_task("{text} [T] [T]\nSentiment:[P]", ["positive", "negative"] * 4)
    real_step = ts._step

    def step_then_interrupt(model, prompt, state, *args):
        if state.step == 2:
            raise KeyboardInterrupt
        return real_step(model, prompt, state, *args)

    monkeypatch.setattr(ts, "_step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        optimize(task, causal_lm, config=planted_config(steps=5, dev_every=1), runs_dir=tmp_path, progress=False)
    run = next(tmp_path.iterdir())
    assert json.loads((run / "result.json").read_text())["state"] == "interrupted"
    saved = autoprompt.read_prompt_file(run / "best.prompt.json")
    checkpoint = json.loads((run / "checkpoint.json").read_text())
    assert list(saved.prompt.trigger_ids) == checkpoint["best_trigger_ids"] and checkpoint["step"] == 2
    assert saved.search["interrupted"] is True and set(saved.metrics) == {"dev"}
