"""Structured output: the only package that imports llguidance (lazily, inside functions).

- ``constraint_spec(json_schema=... | grammar=... | json_object=True)`` -> ConstraintSpec:
  checked and compiled once, refused before generation when it cannot be enforced.
- ``tokenizer_for(key, vocab_table, eos_tokens=...)`` -> GrammarTokenizer, one per loaded model;
  ``release_tokenizer(key)`` when the model closes.
- ``tokenizer.constraint(spec)`` -> Constraint, one per sequence: ``apply_mask(logits)``,
  ``commit(token)``, ``forced_tokens()``, ``is_stopped()``, ``is_accepting()``, ``error``;
  ``apply_masks(constraints, logits_2d)`` for a batch.
- ``parse_json(text, spec, finish_reason=...)``: the validated value, or StructuredOutputError.
- ``classify``: the math of ``model.classify`` (label scores by teacher forcing).
"""

from .classify import (Classification, check_fits, check_labels, classify_messages, end_tokens,
                       label_probabilities, label_tokens, sequence_logprob, terminator_tokens)
from .constraint import (Constraint, GrammarTokenizer, accepts, apply_masks, engine_version, mask_logits,
                         release_tokenizer, tokenizer_for)
from .output import is_valid, parse_json, validate_value
from .spec import JSON_LAYOUT, ConstraintSpec, constraint_spec

__all__ = [
    "Classification", "Constraint", "ConstraintSpec", "GrammarTokenizer", "JSON_LAYOUT", "accepts", "apply_masks",
    "check_fits", "check_labels", "classify_messages", "constraint_spec", "end_tokens", "engine_version", "is_valid",
    "label_probabilities", "label_tokens", "mask_logits", "parse_json", "release_tokenizer", "sequence_logprob",
    "terminator_tokens", "tokenizer_for", "validate_value",
]
