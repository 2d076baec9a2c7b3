"""The batched scoring engine: log-probabilities of answers at [P], predictions, metrics.

Every search calls this thousands of times. Sequences are sorted by length and packed into
batches by a token budget, run under ``torch.inference_mode``, and the output head is
applied only at the positions that predict answer tokens. The modules, bottom up:
batching (packing, padding), caches (what is kept between calls), demos ("similar"
demonstrations), encode (prompts to ids), prefix (shared-prefix KV caches), engine (the
batched queries), scores (label and target scores), evaluate (predictions and metrics)."""

from autoprompt.scoring.batching import DEFAULT_BATCH_TOKENS, MAX_ROWS, pack_batches, pad_right
from autoprompt.scoring.caches import Caches
from autoprompt.scoring.demos import embed_texts, nearest_demonstrations
from autoprompt.scoring.encode import encode_examples, label_word_ids, render_template, target_ids
from autoprompt.scoring.engine import Queries
from autoprompt.scoring.evaluate import Evaluation, combine_evaluations, evaluate
from autoprompt.scoring.generate import generate, greedy_tokens
from autoprompt.scoring.prefix import COMMON_PREFIX_MIN, PrefixCache, common_head, head_cache
from autoprompt.scoring.scores import (
    BATCH_INPUTS,
    CONTENT_FREE,
    TOP_ANSWERS,
    answer_words,
    batch_calibration,
    calibrate,
    content_free_calibration,
    log_normalize,
    measured_calibration,
    score_labels,
    score_targets,
    task_loss,
)

__all__ = [
    "BATCH_INPUTS", "CONTENT_FREE", "TOP_ANSWERS", "answer_words", "COMMON_PREFIX_MIN", "Caches", "DEFAULT_BATCH_TOKENS", "Evaluation", "MAX_ROWS", "PrefixCache",
    "Queries", "batch_calibration", "calibrate", "combine_evaluations", "generate", "greedy_tokens", "common_head", "content_free_calibration", "embed_texts", "encode_examples", "evaluate",
    "head_cache", "label_word_ids", "log_normalize", "measured_calibration", "nearest_demonstrations", "pack_batches", "pad_right",
    "render_template", "score_labels", "score_targets", "target_ids", "task_loss",
]
