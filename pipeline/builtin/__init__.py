"""The demo material, apart from the core: the tiny test model, SmolLM2-135M-Instruct from its PyPI wheel, the
movie-review snippets of the VADER paper and their builders, and toy judges. The core names these only through its
registries (``pipeline.models.sources.BUILTIN_MODELS``, ``pipeline.data.builders.BUILDER_MODULES``)."""
