"""Command-line commands, one module per area; each exposes ``register(app)``.

Heavy libraries (torch, transformers, spaCy, elasticsearch) are imported inside the
command functions so that ``stancewatch --help`` stays instant.
"""
