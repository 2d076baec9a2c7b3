"""Label-word search: the words it proposes separate the classes of a planted task."""

from __future__ import annotations

import torch

from autoprompt.searches.labels import fit_logistic_regression, search_label_words
from autoprompt.task import Example, Task


def test_logistic_regression_separates():
    x = torch.tensor([[2.0, 0.0], [1.5, 0.2], [-2.0, 0.1], [-1.0, -0.3]])
    y = torch.tensor([0, 0, 1, 1])
    weight, accuracy = fit_logistic_regression(x, y, 2)
    assert accuracy == 1.0
    assert weight[0, 0] > 0 > weight[1, 0]


def test_planted_label_words(planted_model):
    """With no layers the state at [P] is the last word's embedding: the label search must
    propose exactly the word that ends the examples of each class."""
    examples = [Example({"text": f"{start} {end}"}, label, f"planted:{i}")
                for i, (start, end, label) in enumerate(
                    [(s, "great", "positive") for s in ("the film was", "it is", "a", "so", "what a cast")]
                    + [(s, "terrible", "negative") for s in ("the film was", "it is", "a", "so", "what a cast")])]
    task = Task(name="planted-labels", template="{text}[P]",
                verbalizer={"negative": ["negative"], "positive": ["positive"]},
                splits={"train": examples, "dev": examples, "test": examples})
    result = search_label_words(planted_model, task, top_k=5)
    assert result.train_accuracy == 1.0
    assert result.words["positive"][0][0] == "great"
    assert result.words["negative"][0][0] == "terrible"
    assert result.verbalizer(1) == {"negative": ["terrible"], "positive": ["great"]}
    scores = [s for _, s in result.words["positive"]]
    assert scores == sorted(scores, reverse=True)
