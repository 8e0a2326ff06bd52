"""ProtoAtlas: service layer and command line over the engine (and, later, storage)."""

__version__ = "0.1.0"
