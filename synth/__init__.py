"""Synthesis: teachers, prompt templates, distilabel pipelines, judging and post-filters."""
