"""Training SFNO checkpoints on the archive (issue #3: data and model construction so far)."""
