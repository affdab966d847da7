"""Feature extraction: video reading, the extractor registry (``features.base.EXTRACTORS``), the feature store."""

import importlib

# Modules that register extractors with ``features.base.register`` when imported.
EXTRACTOR_MODULES = ("features.raw", "features.deep")


def load_extractors() -> dict:
    """Import every extractor module and return the registry ``{family: Extractor subclass}``."""
    from features.base import EXTRACTORS

    for module in EXTRACTOR_MODULES:
        importlib.import_module(module)
    return EXTRACTORS
