"""Model loaders and the model registry (real weights + tiny test variants). Not built yet: the
model-backed stages (watermark, quality, text, complexity, objects, CLIP) arrive with their issue; the
stages of this release need no weights."""
