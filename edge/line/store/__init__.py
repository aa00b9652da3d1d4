"""The defect store: every result/reject/drop/gap the daemon publishes, kept in SQLite or PostgreSQL."""
