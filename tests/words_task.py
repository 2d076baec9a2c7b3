"""A tiny classification task file of random word strings, for tests that run the real CLI."""

from __future__ import annotations


def words_task_file(*, train: int = 40, dev: int = 200, test: int = 20, positive_every: int = 2,
                    test_from_dev: bool = False) -> str:
    """The source of a task file: six random words per example, every ``positive_every``-th one
    negative, the rest positive; seeded, so every process builds the same examples."""
    test_split = f'dev[:{test}]' if test_from_dev else f'examples({test}, "test")'
    return f'''
import numpy as np
from autoprompt.task import Example, Task

WORDS = ["good", "bad", "film", "plot", "the", "a", "is", "was", "slow", "fun", "long", "cast"]
rng = np.random.default_rng(0)

def examples(n, split):
    return [Example({{"text": " ".join(rng.choice(WORDS, size=6))}}, "positive" if i % {positive_every} else "negative",
                    f"{{split}}:{{i}}") for i in range(n)]

train = examples({train}, "train")
dev = examples({dev}, "dev")
task = Task(name="words", template="{{text}} =>[P]", verbalizer={{"negative": ["negative"], "positive": ["positive"]}},
            splits={{"train": train, "dev": dev, "test": {test_split}}})
'''
