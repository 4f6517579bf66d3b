"""Where results live: the SQLite store (one row per run) and its ``records.jsonl`` export."""
