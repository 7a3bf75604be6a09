#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "host/config.h"
#include "host/log.h"
#include "host/migrate.h"

void host_db_path(char *out, size_t len)
{
    snprintf(out, len, "%s/aicode.db", host_config.data_dir);
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int is_migration(const struct dirent *de)
{
    size_t n = strlen(de->d_name);
    return n > 4 && strcmp(de->d_name + n - 4, ".sql") == 0 && de->d_name[0] >= '0' &&
           de->d_name[0] <= '9';
}

static char *read_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf != NULL && fread(buf, 1, (size_t)n, fp) == (size_t)n)
        buf[n] = '\0';
    else {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    return buf;
}

int host_migrate_sqlite(const char *db_path, const char *dir, char *err, size_t errlen)
{
    sqlite3 *db = NULL;
    struct dirent **list = NULL;
    int n = -1, applied = 0, rc = -1;
    char *errmsg = NULL;
    char sqldir[4096];
    snprintf(sqldir, sizeof(sqldir), "%s/sqlite", dir);

    if (sqlite3_open(db_path, &db) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open %s: %s", db_path,
                 db != NULL ? sqlite3_errmsg(db) : "out of memory");
        goto cleanup;
    }
    sqlite3_busy_timeout(db, 10000);
    if (sqlite3_exec(db,
                     "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON;"
                     "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, "
                     "applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))",
                     NULL, NULL, &errmsg) != SQLITE_OK) {
        snprintf(err, errlen, "%s", errmsg);
        goto cleanup;
    }
    n = scandir(sqldir, &list, is_migration, by_name);
    if (n < 0) {
        snprintf(err, errlen, "cannot read migrations in %s", sqldir);
        goto cleanup;
    }
    for (int i = 0; i < n; ++i) {
        const char *name = list[i]->d_name;
        sqlite3_stmt *st;
        sqlite3_prepare_v2(db, "SELECT 1 FROM schema_migrations WHERE version = ?", -1, &st, NULL);
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        int done = sqlite3_step(st) == SQLITE_ROW;
        sqlite3_finalize(st);
        if (done)
            continue;
        char path[8192];
        snprintf(path, sizeof(path), "%s/%s", sqldir, name);
        char *sql = read_file(path);
        if (sql == NULL) {
            snprintf(err, errlen, "cannot read %s", path);
            goto cleanup;
        }
        /* BEGIN IMMEDIATE serialises concurrent migrators (two hosts starting at once). */
        int ok = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &errmsg) == SQLITE_OK;
        if (ok) {
            sqlite3_prepare_v2(db, "SELECT 1 FROM schema_migrations WHERE version = ?", -1, &st,
                               NULL);
            sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
            int raced = sqlite3_step(st) == SQLITE_ROW;
            sqlite3_finalize(st);
            if (raced) {
                sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
                free(sql);
                continue;
            }
            ok = sqlite3_exec(db, sql, NULL, NULL, &errmsg) == SQLITE_OK;
        }
        if (ok) {
            sqlite3_prepare_v2(db, "INSERT INTO schema_migrations (version) VALUES (?)", -1, &st,
                               NULL);
            sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
            ok = sqlite3_step(st) == SQLITE_DONE;
            sqlite3_finalize(st);
        }
        if (ok)
            ok = sqlite3_exec(db, "COMMIT", NULL, NULL, &errmsg) == SQLITE_OK;
        free(sql);
        if (!ok) {
            snprintf(err, errlen, "migration %s failed: %s", name,
                     errmsg != NULL ? errmsg : sqlite3_errmsg(db));
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            goto cleanup;
        }
        host_log("info", "applied migration %s", name);
        ++applied;
    }
    rc = applied;

cleanup:
    sqlite3_free(errmsg);
    if (list != NULL) {
        for (int i = 0; i < n; ++i)
            free(list[i]);
        free(list);
    }
    sqlite3_close(db);
    return rc;
}
