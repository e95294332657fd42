"""BM25 search over the example's encyclopedia (:mod:`rag_agents.data`), with ``bm25s``.

Documents are indexed as ``"{title}. {text}"``, lower-cased and split into words, English stop words
removed, no stemming (the names are invented, a stemmer would only mangle them). A document d scores, for
a query q (Lucene's BM25 variant, bm25s' default, k1 = 1.5, b = 0.75):

    score(q, d) = Σ_{t ∈ q} IDF(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl))
    IDF(t) = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))

Query words that appear in no document are ignored; a query with no known word finds nothing.

    index = default_index()
    index.search("Dorvik river", k=3)    # [Document(title="Dorvik", ...), ...], best first
    index_for("my_corpus.jsonl")         # your documents instead (one {"id", "title", "text"} a line)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import bm25s
from bm25s.tokenization import Tokenizer

from rag_agents.data import Document, corpus, load_corpus


class Index:
    """A BM25 index over ``documents``; :meth:`search` returns the best matches, best first."""

    def __init__(self, documents: Sequence[Document]) -> None:
        if not documents:
            raise ValueError("cannot index an empty corpus")
        self.documents = list(documents)
        self._tokenizer = Tokenizer(stopwords="en")  # no stemmer
        texts = [f"{d.title}. {d.text}" for d in self.documents]
        ids = cast(list[list[int]], self._tokenizer.tokenize(texts, show_progress=False, return_as="ids"))
        self._bm25 = bm25s.BM25()
        self._bm25.index(ids, show_progress=False)

    def search(self, query: str, k: int = 3) -> list[Document]:
        """Up to ``k`` documents with a positive score for ``query``, best first (empty when none matches)."""
        if k < 1:
            raise ValueError(f"k must be ≥ 1, got {k}")
        k = min(k, len(self.documents))
        ids = cast(
            list[list[int]],
            self._tokenizer.tokenize([query], update_vocab=False, show_progress=False, return_as="ids"),
        )
        if not any(ids[0]):  # id 0 is the empty token: every word of the query is unknown (or a stop word)
            return []
        hits, scores = self._bm25.retrieve(cast(Any, ids), k=k, show_progress=False, n_threads=1)
        return [self.documents[int(i)] for i, s in zip(hits[0], scores[0], strict=True) if s > 0]


@functools.cache
def default_index() -> Index:
    """The index of the example's corpus, built once per process (a few milliseconds)."""
    return Index(corpus())


@functools.cache
def index_for(corpus_path: str | None = None) -> Index:
    """The index of your corpus (a JSONL file of ``{"id", "title", "text"}``, see :func:`data.load_corpus`),
    built once per process and path; the example's own corpus when ``corpus_path`` is None."""
    if corpus_path is None:
        return default_index()
    return Index(load_corpus(corpus_path))
