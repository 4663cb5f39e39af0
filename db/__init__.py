"""The database side of pgsight: DSN resolution, the embedded server, migrations, ORM helpers."""
