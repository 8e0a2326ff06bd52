"""ProtoAtlas: the service layer and the command line over ``engine`` and ``storage``."""

__version__ = "0.1.0"
