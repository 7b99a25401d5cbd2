"""Training SFNO checkpoints on the archive: data windows, the loop, skill scoring, DDP."""
