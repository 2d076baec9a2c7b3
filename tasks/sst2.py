"""SST-2: is a movie-review sentence negative or positive? (GLUE binary sentiment.)

Train and dev are disjoint samples of GLUE train (3000 / 500); test is the GLUE dev set (872).
See tasks/data/README.md.
"""

from pathlib import Path

from autoprompt.task import Task, read_examples

DATA = Path(__file__).parent / "data" / "sst2"

task = Task(
    name="sst2",
    template="Review: {text}\nSentiment:[P]",
    verbalizer={"negative": ["negative"], "positive": ["positive"]},
    metric="accuracy",
    splits={
        split: read_examples(DATA / f"{split}.jsonl")
        for split in ("train", "dev", "test")
    },
    description="Binary sentiment of movie-review sentences (SST-2, GLUE).",
)
