"""Local state: SQLite (connections, migrations), the catalog, the content cache and the journal.
The only SQL.
"""
