"""Stage configs of the train area (see its issue). Each class registers itself by its `stage` literal."""

from __future__ import annotations
