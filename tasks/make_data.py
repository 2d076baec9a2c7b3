"""Build tasks/data from the source data files, deterministically (same input -> same bytes).

    python tasks/make_data.py [--source DIR] [--out DIR]

The source folder holds sst2/{train,dev}.jsonl and lama/{P19,P103}{,.train}.jsonl, as described
in tasks/data/README.md (which this script writes too). Their sha256 are checked first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED = 0
SST2_TRAIN_SIZE = 3000
REVIEWS_SIZE = 600
SST2_DEV_SIZE = 500
SST2_MIN_WORDS = 10
LAMA_DEV_FRACTION = 0.2
LAMA_RELATIONS = ("P19", "P103")

SOURCE_SHA256 = {
    "sst2/train.jsonl": "f5b8eeef79cec4eac070a87510ec00660dd8cb81c9a57d35d85cdf6924b92a74",
    "sst2/dev.jsonl": "54c07b7286d4b37e47d75cf1fe036f963e67800add77505e2594775c26eac0ba",
    "lama/P19.jsonl": "c33d72fcf8f56137757ec9035ae2eaf503b08d5e9190116e93e4c57aba88ca77",
    "lama/P19.train.jsonl": "a90f499a30c1ec192acacf18ce526fc4665f84efb0740cdd52555b14e21dcfb6",
    "lama/P103.jsonl": "fcf7afe6df60ddb7bf65c21e3f9fa218b8df38dfc0d56af94cfbc504b3476d92",
    "lama/P103.train.jsonl": "774003cca6b1e0bcef9f35027c22120d810c7f4c6ed09908649a650dd8a4c182",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8", newline="\n")


def check_sources(source: Path) -> None:
    for name, expected in SOURCE_SHA256.items():
        path = source / name
        if not path.is_file():
            raise SystemExit(f"{path}: no such file (is --source right?)")
        if sha256(path) != expected:
            raise SystemExit(
                f"{path}: sha256 differs from the known source file; refusing to build"
            )


def build_sst2(source: Path, out: Path) -> None:
    """Train and dev: disjoint seeded samples of GLUE train; test: the GLUE dev set as is."""
    glue_train = read_jsonl(source / "sst2/train.jsonl")
    glue_dev = read_jsonl(source / "sst2/dev.jsonl")
    text_counts = Counter(row["text"] for row in glue_train)
    dev_texts = {row["text"] for row in glue_dev}
    # Texts that occur more than once in GLUE train are dropped, so no text can land in two splits.
    pool = [
        row
        for row in glue_train
        if text_counts[row["text"]] == 1
        and row["text"] not in dev_texts
        and len(row["text"].split()) >= SST2_MIN_WORDS
    ]
    # Class-balanced, like the test set (51% positive): a dev split with GLUE train's 54-57%
    # positive rewards prompts that lean positive, a gain that does not carry over to test.
    rng = random.Random(SEED)
    by_label = {label: [r for r in pool if r["label"] == label] for label in ("negative", "positive")}
    picked = {label: rng.sample(rows, (SST2_TRAIN_SIZE + SST2_DEV_SIZE) // 2) for label, rows in by_label.items()}
    keep = ("text", "label")

    def split(start: int, stop: int) -> list[dict]:
        rows = [r for label in sorted(picked) for r in picked[label][start:stop]]
        rng.shuffle(rows)
        return [{k: r[k] for k in keep} for r in rows]

    write_jsonl(out / "sst2/train.jsonl", split(0, SST2_TRAIN_SIZE // 2))
    write_jsonl(out / "sst2/dev.jsonl", split(SST2_TRAIN_SIZE // 2, (SST2_TRAIN_SIZE + SST2_DEV_SIZE) // 2))
    write_jsonl(out / "sst2/test.jsonl", [{k: r[k] for k in keep} for r in glue_dev])


def build_reviews(out: Path) -> None:
    """reviews.csv: the first 600 rows of sst2/train.jsonl as a plain CSV (text,label): the example of
    "your own data" (autoprompt tasks --copy reviews.csv). Its rows are train rows: none is in test."""
    import csv
    import io

    rows = read_jsonl(out / "sst2/train.jsonl")[:REVIEWS_SIZE]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows([row["text"], row["label"]] for row in rows)
    (out / "reviews.csv").write_text(buffer.getvalue(), encoding="utf-8", newline="")


def build_country_codes(out: Path) -> None:
    """countries/{train,dev,test}.jsonl: each country's name (ISO 3166-1, as pycountry ships it: its
    common name where it has one) and its alpha-3 code; one seeded shuffle, split 100 / 49 / 100."""
    import pycountry

    rows = sorted(({"country": getattr(c, "common_name", None) or c.name, "code": c.alpha_3}
                   for c in pycountry.countries), key=lambda r: r["code"])
    random.Random(SEED).shuffle(rows)
    sizes = {"train": 100, "dev": 49}
    write_jsonl(out / "countries/train.jsonl", rows[: sizes["train"]])
    write_jsonl(out / "countries/dev.jsonl", rows[sizes["train"] : sizes["train"] + sizes["dev"]])
    write_jsonl(out / "countries/test.jsonl", rows[sizes["train"] + sizes["dev"] :])


def build_lama(source: Path, out: Path, relation: str) -> None:
    """Test: the LAMA test facts; train/dev: the LPAQA train facts split 80/20 by subject."""
    facts = read_jsonl(source / f"lama/{relation}.train.jsonl")
    subjects = sorted({fact["subject"] for fact in facts})
    random.Random(SEED).shuffle(subjects)
    facts_of_subject = Counter(fact["subject"] for fact in facts)
    # Whole subjects go to dev until it holds 20% of the facts, so no subject is in both splits.
    dev_subjects: set[str] = set()
    dev_size, target = 0, round(LAMA_DEV_FRACTION * len(facts))
    for subject in subjects:
        if dev_size >= target:
            break
        dev_subjects.add(subject)
        dev_size += facts_of_subject[subject]
    write_jsonl(
        out / f"lama/{relation}.train.jsonl",
        [f for f in facts if f["subject"] not in dev_subjects],
    )
    write_jsonl(
        out / f"lama/{relation}.dev.jsonl",
        [f for f in facts if f["subject"] in dev_subjects],
    )
    write_jsonl(
        out / f"lama/{relation}.test.jsonl",
        read_jsonl(source / f"lama/{relation}.jsonl"),
    )


def file_table(out: Path) -> str:
    rows = ["| file | rows | answers | sha256 |", "|---|---|---|---|"]
    for path in sorted(out.rglob("*.jsonl")):
        records = read_jsonl(path)
        if "label" in records[0]:
            counts = Counter(r["label"] for r in records)
            answers = " / ".join(f"{label} {n}" for label, n in sorted(counts.items()))
        elif "code" in records[0]:
            answers = f"{len({r['code'] for r in records})} distinct codes"
        else:
            answers = f"{len({r['object'] for r in records})} distinct objects"
        name = path.relative_to(out).as_posix()
        rows.append(f"| `{name}` | {len(records)} | {answers} | `{sha256(path)}` |")
    return "\n".join(rows)


README = """\
# Task data

Built by `python tasks/make_data.py --source DIR` (from the repository root) out of the source
files listed below; the script checks their sha256, and the same sources always give the same
bytes. Every file is JSONL, UTF-8, one object per line. Do not edit these files by hand.

{table}

## SST-2 (`sst2/`): `{{"text", "label"}}`, label `negative` or `positive`

- `test.jsonl`: the GLUE SST-2 dev set (872 sentences), unchanged. The labelled SST-2 test set
  is not shipped, so the GLUE dev set serves as our test set.
- `train.jsonl` ({train} rows) and `dev.jsonl` ({dev} rows): one seeded, class-balanced sample
  (`random.Random({seed})`, half negative, half positive) of GLUE SST-2 train rows, split into two
  disjoint parts. GLUE train holds whole sentences and sub-sentence phrases from the SST parse
  trees; only rows with at least {min_words} words were sampled (mean length 18 words; test: 19.5), and texts that occur more than once in GLUE train were dropped,
  so no text is in two splits. Text is lowercased and PTB-tokenized, as in GLUE (`it 's`).
- Source: GLUE SST-2 (`train_full.tsv`, `dev.tsv`) from `eyalbd2/Reproducing-AutoPrompt` at
  commit `6288fb5b`; trailing spaces stripped, labels 0/1 named negative/positive.
- License: the Stanford Sentiment Treebank has no explicit license; GLUE redistributes it for
  research use. Cite Socher et al. (2013) and Wang et al. (2018).

## Your-own-data example (`reviews.csv`): `text,label`

- The first {reviews} rows of `sst2/train.jsonl` as a plain CSV, the example README's "optimize your
  own file" starts from (`autoprompt tasks --copy reviews.csv`). Its rows are SST-2 train rows: none of
  them is in `sst2/test.jsonl`. Same source and license as SST-2 above.

## Country codes (`countries/`): `{{"country", "code"}}`

- Every country of ISO 3166-1 as the package `pycountry` ({pycountry}) ships it: its name (the
  common name where it has one, e.g. `Bolivia` for `Bolivia, Plurinational State of`) and its alpha-3
  code (`BOL`). One seeded shuffle (`random.Random({seed})`), split into train (100), dev (49) and
  test (100): no country is in two splits.
- Source: pycountry, whose data come from Debian's `iso-codes` (LGPL-2.1-or-later); the codes are
  ISO 3166-1's.

## LAMA T-REx (`lama/`): `{{"subject", "object", "relation"}}`

- `P19` (place of birth) and `P103` (native language).
- `<rel>.test.jsonl`: the LAMA T-REx test facts as filtered in `ncarraz/OptiPrompt` at commit
  `ed99dd44` (`data/filtered_LAMA/`), a subset of LAMA whose objects are mostly single words.
- `<rel>.train.jsonl` and `<rel>.dev.jsonl`: the T-REx training facts of Jiang et al. (2020,
  LPAQA; `jzbjyb/LPAQA` at `3204221b`, `TREx_train.tar.gz`), the collection AutoPrompt trains on,
  less facts whose subject is in the test set; split by subject (shuffled with
  `random.Random({seed})`) into about {train_pct}% train and {dev_pct}% dev, so no subject is in
  two splits. These facts are noisier than the test facts (some subjects are bare surnames).
- Object distributions are skewed: in P103 test, `French` is 65% of the facts.
- Licenses: T-REx is CC BY-SA 4.0 (Elsahar et al., 2018); LAMA is CC BY 4.0 (Petroni et al.,
  2019). Cite Petroni et al. (2019), Elsahar et al. (2018) and Jiang et al. (2020).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="folder with sst2/ and lama/ source files (default: ../shared/data)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "tasks" / "data",
        help="where to write the task data (default: tasks/data)",
    )
    args = parser.parse_args()
    check_sources(args.source)
    build_sst2(args.source, args.out)
    build_reviews(args.out)
    build_country_codes(args.out)
    for relation in LAMA_RELATIONS:
        build_lama(args.source, args.out, relation)
    readme = README.format(
        table=file_table(args.out),
        train=SST2_TRAIN_SIZE,
        reviews=REVIEWS_SIZE,
        pycountry=__import__("importlib.metadata", fromlist=["version"]).version("pycountry"),
        dev=SST2_DEV_SIZE,
        seed=SEED,
        min_words=SST2_MIN_WORDS,
        train_pct=round(100 * (1 - LAMA_DEV_FRACTION)),
        dev_pct=round(100 * LAMA_DEV_FRACTION),
    )
    (args.out / "README.md").write_text(readme, encoding="utf-8", newline="\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
