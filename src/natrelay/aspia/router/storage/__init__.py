"""The router's storage: one interface (``base``), SQLite (``..db``) and PostgreSQL (``postgres``)."""
