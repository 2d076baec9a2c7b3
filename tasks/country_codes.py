"""Country codes: a country's name in, its ISO 3166-1 alpha-3 code out (generated text, exact match).

A transformation task: the answer is a short text the model must produce, not a label to choose.
The answer is one code: generation also stops at ".", "," and a space ("FRA (France)" is "FRA").
Data: ISO 3166-1 as pycountry ships it, split by seed into train / dev / test (tasks/data/README.md).
"""

from pathlib import Path

from autoprompt.task import Task, read_examples

DATA = Path(__file__).parent / "data" / "countries"

task = Task(
    name="country_codes",
    template="Country: {country}\nISO 3166 alpha-3 code:[P]",
    metric="exact_match",
    stop=(".", ",", " "),
    splits={split: read_examples(DATA / f"{split}.jsonl", fields=["country"], answer="code")
            for split in ("train", "dev", "test")},
    description="ISO 3166-1: a country's name -> its alpha-3 code (generated, exact match).",
)
