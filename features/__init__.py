"""Feature extraction: video reading, the extractor contract (``features.base``), the extractors of the raw, hrnet
and csn families, the HDF5 feature store, similarity methods and imports of your own features. Which extractor
computes which tier's stores is declared by the tier registry (``tiers``), one layer up."""
