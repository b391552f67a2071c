"""A TensorFlow-Serving-compatible REST server for exported separators, its client,
and the files that run the same export directory under the official TF Serving image.

    python -m serve --model-base-path export/wavesep --model-name wavesep --port 8501
    python -m serve.client song.mp3 --url http://127.0.0.1:8501 --model wavesep --out separated/

``rest`` holds TF Serving's JSON rules, ``repository`` the versions on disk and in
memory, ``app`` the HTTP routes (REST API v1 and the web page), ``live`` the
live-separation WebSocket (``/v1/models/NAME:stream``), ``client`` the chunked file
separation through any server that speaks REST API v1.
"""
