"""Optional neural engine running user-supplied Wav2Lip checkpoints (weights are never bundled)."""
