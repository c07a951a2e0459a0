"""Storage: the database engine, the tables, migrations and the queries the service runs."""
