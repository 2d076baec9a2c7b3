"""Build the small real tokenizers used by the unit tests.

Run once from the repository root; the outputs under ``tests/fixtures/`` are
committed, so the tests never need network or a model hub:

    .venv/bin/python tests/make_fixtures.py

Two tokenizers are trained with the ``tokenizers`` library on the first 20k
SST-2 training texts plus the LAMA subjects/objects:

* ``tests/fixtures/tokenizer-bpe/``: byte-level BPE (GPT-2 / Llama-3 /
  SmolLM2 style), ``<|endoftext|>`` as bos/eos/pad/unk, ChatML specials and a
  ChatML chat template.
* ``tests/fixtures/tokenizer-wordpiece/``: lowercase BERT-style WordPiece with
  ``[CLS] $A [SEP]`` post-processing and a ``[MASK]`` token.

The build is deterministic (single-threaded training, fixed corpus order); the
script asserts that the sentiment label words are single tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("AUTOPROMPT_DATA", "/work/shared/data"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BPE_DIR = FIXTURES / "tokenizer-bpe"
WORDPIECE_DIR = FIXTURES / "tokenizer-wordpiece"

VOCAB_SIZE = 2000
N_SST2 = 20_000
MODEL_MAX_LENGTH = 512

# Words that must be single tokens (label words / verbalizers used by tests).
LABEL_WORDS = ["positive", "negative", "great", "terrible", "good", "bad"]
# Extra repetitions so that BPE/WordPiece merges build these words early.
LABEL_REPEATS = 3000

EOT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _read_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                yield json.loads(line)


def corpus() -> list[str]:
    """Deterministic training corpus (a list, so both trainers see the same)."""
    texts: list[str] = []
    sst2 = DATA / "sst2" / "train.jsonl"
    for i, row in enumerate(_read_jsonl(sst2)):
        if i >= N_SST2:
            break
        texts.append(row["text"])
    for path in sorted((DATA / "lama").glob("*.jsonl")):
        for row in _read_jsonl(path):
            texts.append(row["subject"])
            texts.append(f"{row['subject']} is {row['object']} .")
            texts.append(row["object"])
    # Label words both at line start (no leading space) and after a space,
    # in lower and capitalised form.
    for _ in range(LABEL_REPEATS):
        for word in LABEL_WORDS:
            texts.append(word)
            texts.append(f"it was {word} .")
            texts.append(f"the movie is {word}")
    return texts


def build_bpe(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=[EOT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        unk_token=EOT,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_wordpiece(texts: list[str]) -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    # The WordPiece trainer assigns ids to "##c" continuation characters in
    # Rust HashMap order (random per process), and merge ties are broken by
    # id, so plain training is not reproducible.  Pinning every "##c" to a
    # fixed id (as leading trainer "special tokens", sorted) makes it so; the
    # final tokenizer is then rebuilt from the vocab with only the real
    # special tokens registered.
    chars: set[str] = set()
    for text in texts:
        chars.update(normalizer.normalize_str(text))
    chars -= {" ", "\t", "\n", "\r"}
    pinned = [f"##{c}" for c in sorted(chars)]

    scratch = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    scratch.normalizer = normalizer
    scratch.pre_tokenizer = pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=specials + pinned,
        continuing_subword_prefix="##",
    )
    scratch.train_from_iterator(texts, trainer=trainer, length=len(texts))
    vocab = scratch.get_vocab(with_added_tokens=False)

    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(specials)
    cls_id = tok.token_to_id("[CLS]")
    sep_id = tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=True,
        # BERT inputs; the transformers 5 default omits token_type_ids.
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _save(tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tokenizer.save_pretrained(str(out))


def check_bpe(out: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    for word in LABEL_WORDS:
        for form in (word, " " + word):
            ids = tok.encode(form, add_special_tokens=False)
            assert len(ids) == 1, f"BPE: {form!r} -> {tok.convert_ids_to_tokens(ids)}"
            assert tok.decode(ids) == form, (form, tok.decode(ids))
    for special in (EOT, IM_START, IM_END):
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1, (special, ids)
    assert tok.eos_token == EOT and tok.pad_token == EOT and tok.bos_token == EOT
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", rendered


def check_wordpiece(out: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    for word in LABEL_WORDS[:4]:
        ids = tok.encode(word, add_special_tokens=False)
        assert len(ids) == 1, f"WordPiece: {word!r} -> {tok.convert_ids_to_tokens(ids)}"
    ids = tok.encode("a great movie")
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id, ids
    assert tok.mask_token_id is not None
    enc = tok("the [MASK] is great", "b")
    assert enc["input_ids"].count(tok.mask_token_id) == 1, enc
    assert enc["token_type_ids"][-1] == 1, enc


def _summary(out: Path) -> str:
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    return f"{out.relative_to(ROOT)}: {size / 1024:.1f} KiB ({files})"


def main() -> int:
    # Quiet, single-threaded training (the rayon pool starts lazily, so this
    # takes effect here); determinism itself comes from the pinned "##c" ids.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    texts = corpus()
    _save(build_bpe(texts), BPE_DIR)
    check_bpe(BPE_DIR)
    _save(build_wordpiece(texts), WORDPIECE_DIR)
    check_wordpiece(WORDPIECE_DIR)
    for out in (BPE_DIR, WORDPIECE_DIR):
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
        assert size < 300 * 1024, (out, size)
        print(_summary(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
