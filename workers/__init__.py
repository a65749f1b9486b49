"""The Ray side: the worker runtime and one module per curation stage."""
