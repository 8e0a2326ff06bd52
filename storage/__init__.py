"""Persistence (DuckDB workspaces): arrives with the storage issue; nothing here yet."""
