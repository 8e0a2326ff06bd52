"""ProtoAtlas engine: pure compute (arrays and images in, arrays and dataclasses out)."""
