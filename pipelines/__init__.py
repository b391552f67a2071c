"""Separation at catalog scale on Apache Beam (``python -m pipelines.catalog``): the
command and pipeline (``catalog``), the songs it finds, decodes and cuts (``songs``),
the model under RunInference (``model_handler``), and the outputs and their records
(``outputs``). docs/catalog.md says how to run it."""
