/*
 * SQLite schema migrations: applies db/sqlite/NNN_name.sql files in order, each in
 * its own transaction, recording them in schema_migrations. Idempotent.
 */
#ifndef HOST_MIGRATE_H
#define HOST_MIGRATE_H

#include <stddef.h>

/** Path of the embedded database inside the data directory. */
void host_db_path(char *out, size_t len);

/**
 * Applies pending migrations from `dir` to the database at `db_path`.
 * Returns the number applied, or -1 with `err` filled.
 */
int host_migrate_sqlite(const char *db_path, const char *dir, char *err, size_t errlen);

#endif
