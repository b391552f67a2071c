"""The separation runtime, shared by the CLIs, the benchmarks and the server:
``separator`` (a model as the chunked path sees it), ``chunking`` (songs and streams
through it), ``loading`` (run directories, SavedModels, ONNX files as separators),
``saved_model_graph`` (the exported graph's signatures), ``run_directory`` (a run's layout
and its config.json, ``RunConfig``), ``model_facts`` (an export's facts, ``ModelFacts``),
``export`` (exporting a run), ``scoring`` (museval scores beside the no-separation
baselines), ``metrics`` (fast SDR and the best no-separation baseline),
``channels`` and ``resampling`` (the channel and resampling rules both paths follow)."""
