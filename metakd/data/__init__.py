"""Data: labelled text (single texts or GLUE-style pairs) from the embedded default, local files,
../shared/data or the Hugging Face hub; language-modelling corpora; tokenization for teacher and
student; quiz split; validation split; padding collators.

Classification examples are ``(text, label)`` or ``((text_a, text_b), label)`` with integer labels
(``load_task`` maps label names to ids). Language-modelling corpora are lists of document strings
(``load_lm_corpus``), cut into token blocks by ``encode_lm``.

The modules, one job each: ``errors`` (DataError), ``labels`` (parsing, mapping and checking
labels), ``columns`` (which columns of a row hold texts and label), ``files`` (reading one labelled
file), ``hub`` (loading from the Hugging Face hub), ``tasks`` (``load_task``), ``lm``
(``load_lm_corpus``), ``encoding`` (``encode``, ``encode_lm``) and ``batching`` (collators, quiz
split, loaders), ``splits`` (the validation split). Import from ``metakd.data``; the names below
are its public interface.
"""

from __future__ import annotations

from .batching import labels_of, loader, make_collator, split_quiz
from .columns import LABEL_COLUMNS, PAIR_COLUMNS, TEXT_COLUMNS, ColumnSpec
from .encoding import EncodedDataset, encode, encode_lm
from .errors import DataError
from .files import CLASSIFICATION_SUFFIXES, read_labelled_file
from .hub import EVAL_SPLITS
from .labels import Example, Text, check_labels, infer_num_labels
from .lm import LM_CORPORA, LM_SPLITS, LM_SUFFIXES, HubCorpus, load_lm_corpus, paragraphs, wikitext_articles
from .splits import split_validation, text_key
from .tasks import EVAL_FILES, HUB_TASKS, HubTask, load_task

__all__ = [
    "CLASSIFICATION_SUFFIXES", "EVAL_FILES", "EVAL_SPLITS", "HUB_TASKS", "LABEL_COLUMNS", "LM_CORPORA", "LM_SPLITS",
    "LM_SUFFIXES", "PAIR_COLUMNS", "TEXT_COLUMNS",
    "ColumnSpec", "DataError", "EncodedDataset", "Example", "HubCorpus", "HubTask", "Text",
    "check_labels", "encode", "encode_lm", "infer_num_labels", "labels_of", "load_lm_corpus", "load_task",
    "loader", "make_collator", "paragraphs", "read_labelled_file", "split_quiz", "split_validation", "text_key",
    "wikitext_articles",
]
