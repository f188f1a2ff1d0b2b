"""Expert review in Argilla: routing, push/pull, merge, agreement, and the embedded server."""
