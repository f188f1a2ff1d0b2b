"""Curation: readers, normalisation, quality filters, exact + MinHash dedup, PII, annotation routing."""
