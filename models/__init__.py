"""Separation models: ``architecture`` (the record each declares, the source names,
precisions), one module per architecture, ``registry`` (the list of them)."""
