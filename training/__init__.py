"""Training, under train.py: a run's configuration (``run_config``), its data (``data``),
the training session and fit loop (``session``), distribution strategy, resumable
backups, and the validation and TensorBoard callbacks."""
