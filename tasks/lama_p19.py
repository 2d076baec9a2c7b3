"""LAMA T-REx P19, place of birth: where was the subject born?

Fact retrieval: the model completes the template with the object (free-form, precision@1).
Test: the LAMA test facts; train/dev: T-REx training facts (LPAQA), split by subject.
See tasks/data/README.md.
"""

from pathlib import Path

from autoprompt.task import Task, read_examples

DATA = Path(__file__).parent / "data" / "lama"

task = Task(
    name="lama_p19",
    template="{subject} was born in[P]",
    verbalizer=None,
    metric="precision@1",
    splits={
        split: read_examples(
            DATA / f"P19.{split}.jsonl", fields=["subject"], answer="object"
        )
        for split in ("train", "dev", "test")
    },
    description="LAMA T-REx P19 (place of birth): fill in the object of the fact.",
)
