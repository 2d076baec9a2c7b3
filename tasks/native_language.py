"""Native language, generated: the LAMA T-REx P103 facts with the whole object as the answer to
generate (exact match after case and spaces), not only its first token as in lama_p103.

The answer is one or two words: generation also stops at "." and "," (the model's "French." is "French").
Same data as lama_p103 (tasks/data/lama/P103.*.jsonl; tasks/data/README.md).
"""

from pathlib import Path

from autoprompt.task import Task, read_examples

DATA = Path(__file__).parent / "data" / "lama"

task = Task(
    name="native_language",
    template="The native language of {subject} is[P]",
    metric="exact_match",
    stop=(".", ","),
    splits={split: read_examples(DATA / f"P103.{split}.jsonl", fields=["subject"], answer="object")
            for split in ("train", "dev", "test")},
    description="LAMA T-REx P103: the native language of the subject, generated in full (exact match).",
)
