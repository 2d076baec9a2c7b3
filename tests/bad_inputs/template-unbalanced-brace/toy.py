from pathlib import Path

from autoprompt.task import Task, read_examples

here = Path(__file__).parent
task = Task(name="toy", template="Review: text}\nSentiment:[P]",
            verbalizer={"negative": ["terrible"], "positive": ["great"]},
            splits={"train": read_examples(here / "dev.jsonl"), "dev": read_examples(here / "dev.jsonl")})
