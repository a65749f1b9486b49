"""The bundled CrossDiT trainer, sampler and latent-shard loader. Not built yet (its own issue)."""
