"""The separation runtime, shared by the CLIs, the benchmarks and the server:
``separator`` (a model as the chunked path sees it), ``chunking`` (songs and streams
through it), ``loading`` (run directories, SavedModels, ONNX files as separators),
``saved_model_graph`` (the exported graph's signatures), ``run_directory`` (a run's layout)."""
