"""Model loaders and the model registry (``models/registry.py``). Each loader resolves its weights
through the registry (sha256-verified) and reports the checksum for provenance."""
