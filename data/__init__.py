"""Input pipelines, their on-disk formats, and offline generators of those formats."""
