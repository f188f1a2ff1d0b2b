"""Retrieval over curated chunks: the ``index`` stage and the reader API other stages use.

``from curation.index import open_index`` -> :class:`Index` with ``search(query, k)`` and
``search_many(queries, k)`` returning :class:`Hit` (chunk_id, source_id, span, score, text, title).
"""

from curation.index.reader import Hit, Index, open_index

__all__ = ["Hit", "Index", "open_index"]
