"""Durable state: SQLite databases (WAL) per model, their schemas and retention."""
