from pathlib import Path

from autoprompt.task import Task, read_examples

here = Path(__file__).parent
task = Task(name="toy", template="{text} It was [P] .",
            verbalizer={"negative": ["terrible"], "positive": ["unbelievable"]},
            splits={"train": read_examples(here / "dev.jsonl"), "dev": read_examples(here / "dev.jsonl")})
