"""The bottom layer: what every other part of m3s stands on, importing nothing of the project.

``core.io`` (the error base class, atomic writes, the code version), ``core.media`` (file suffixes and video ids),
``core.device`` (the one device resolver), ``core.cli`` (the scripts' argument parser), ``core.options`` (the
typed-config field helper that tiers declare their options with), ``core.demo`` (the built-in synthetic corpus).
"""
