"""Ingest: folders, files or globs of txt, md, html, pdf, jsonl, csv and parquet -> DOCUMENTS.

* :mod:`curation.ingest.discover` finds the inputs (symlink policy, stable source URIs, shards);
* :mod:`curation.ingest.readers` turns each format into text or records;
* :mod:`curation.ingest.stage` is the recipe stage.

Every file, line, record or row group that cannot be read (binary, empty, wrongly encoded, oversized,
malformed, unsupported, a link out of the input folders, a link loop, a non-UTF-8 name, a pipe) is
quarantined with the reason and the run goes on.
"""

from curation.ingest.discover import Entry, discover, input_roots, manifest, plan_shards
from curation.ingest.readers import Unreadable, decode, extract_html, extract_pdf
from curation.ingest.stage import EXTENSIONS, IngestStage, ingest_paths

__all__ = ["EXTENSIONS", "Entry", "IngestStage", "Unreadable", "decode", "discover", "extract_html", "extract_pdf",
           "ingest_paths", "input_roots", "manifest", "plan_shards"]
