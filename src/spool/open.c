/* SPDX-License-Identifier: Apache-2.0 */
/* Opening the spool: its file, its metadata (spool id, installation) and
 * its keys; group commit. */
#include "internal.h"

#define DEFAULT_MAX_TRIES 25

/* A value of the meta table; -ENOENT when absent. */
static int meta_blob(Db *db, const char *key, uint8_t **ret, size_t *ret_len)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = db_prepare(db, "SELECT value FROM meta WHERE key = ?1", &st);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return -ENOENT;
    if (rc != SQLITE_ROW)
        return db_error(db, rc, "read meta");
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    uint8_t *v = malloc(n + 1);
    if (!v)
        return -ENOMEM;
    if (n)
        memcpy(v, sqlite3_column_blob(st, 0), n);
    v[n] = 0;
    *ret = v;
    *ret_len = n;
    return 0;
}

int spool_meta_get(Spool *s, const char *key, uint8_t **ret, size_t *ret_len)
{
    return meta_blob(s->db, key, ret, ret_len);
}

int spool_meta_set(Spool *s, const char *key, const void *v, size_t n, bool text)
{
    _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_META_SET);
    if (!st)
        return -EIO;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (text)
        sqlite3_bind_text(st, 2, v, (int)n, SQLITE_TRANSIENT);
    else
        sqlite3_bind_blob(st, 2, v, (int)n, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    return rc == SQLITE_DONE ? 0 : db_error(s->db, rc, "write meta");
}

/* The last failure, for status: "<time> <event_id>: <reason>". */
int spool_note_error(Spool *s, const char *event_id, const char *reason)
{
    char when[32], line[512];
    lv_format_time(lv_now_ms(), when);
    int n = snprintf(line, sizeof(line), "%s %s: %s", when, event_id, reason);
    return spool_meta_set(s, "last_error", line,
                          n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1, true);
}

static int load_meta(Spool *s, const SpoolOptions *opt)
{
    _cleanup_free_ uint8_t *v = NULL;
    size_t n = 0;
    int r = spool_meta_get(s, "spool_id", &v, &n);
    if (r == -ENOENT) {
        if (!s->tok)
            return lv_error_set(-EPROTO, "spool %s: no spool id (not initialized)", s->path);
        r = lv_random(s->spool_id, SPOOL_ID_LEN);
        if (r < 0)
            return lv_error_set(r, "spool: random spool id: %s", strerror(-r));
        r = spool_meta_set(s, "spool_id", s->spool_id, SPOOL_ID_LEN, false);
        if (r < 0)
            return r;
    } else if (r < 0) {
        return r;
    } else if (n != SPOOL_ID_LEN) {
        return lv_error_set(-EUCLEAN, "spool %s: spool id is %zu bytes, not %d", s->path, n,
                            SPOOL_ID_LEN);
    } else {
        memcpy(s->spool_id, v, SPOOL_ID_LEN);
    }
    free(TAKE_PTR(v));

    r = spool_meta_get(s, "installation_id", &v, &n);
    if (r < 0 && r != -ENOENT)
        return r;
    if (r == 0 && !lv_valid_id((char *)v))
        return lv_error_set(-EUCLEAN, "spool %s: stored installation id is not valid", s->path);
    if (opt->installation_id) {
        if (!lv_valid_id(opt->installation_id))
            return lv_error_set(LV_ERR_INPUT,
                                "--installation-id: must be 1-128 bytes of [A-Za-z0-9._:@/-]");
        if (r == 0 && strcmp((char *)v, opt->installation_id) != 0)
            return lv_error_set(LV_ERR_INPUT,
                                "--installation-id: the spool %s belongs to installation %s, "
                                "not %s",
                                s->path, (char *)v, opt->installation_id);
        if (r == -ENOENT && s->tok) {
            r = spool_meta_set(s, "installation_id", opt->installation_id,
                               strlen(opt->installation_id), true);
            if (r < 0)
                return r;
        }
        snprintf(s->installation_id, sizeof(s->installation_id), "%s", opt->installation_id);
    } else if (r == 0) {
        snprintf(s->installation_id, sizeof(s->installation_id), "%s", (char *)v);
    }
    free(TAKE_PTR(v));

    if (!s->tok)
        return 0;
    r = spool_deks_load(s);
    if (r < 0)
        return r;
    s->have_dek = true;
    return 0;
}

int spool_open(const SpoolOptions *opt, Token *tok, Spool **ret)
{
    if (!opt || !opt->path || !*opt->path)
        return lv_error_set(LV_ERR_INPUT, "--spool-db: missing");
    Spool *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->tok = tok;
    s->include_payload = opt->include_payload;
    s->max_attempts = opt->max_attempts > 0 ? opt->max_attempts : DEFAULT_MAX_TRIES;
    s->quota_items = opt->quota_items > 0 ? opt->quota_items : 0;
    s->quota_bytes = opt->quota_bytes > 0 ? opt->quota_bytes : 0;
    pthread_mutex_init(&s->dek_lock, NULL);
    s->path = strdup(opt->path);
    if (!s->path) {
        spool_close(s);
        return -ENOMEM;
    }
    /* An existing file that others may read is refused rather than
     * silently tightened. Without the token nothing is created: the schema,
     * the metadata and the first DEK are made in one transaction. */
    DbOptions o = {
        .path = opt->path,
        .label = "spool",
        .flags = (tok ? DB_CREATE : 0) | DB_KEEP_TRANSACTION,
        .schema = &spool_schema,
        .refuse_mode = 0077,
        .refuse_error = LV_ERR_INPUT,
        .missing_hint = "enqueue creates it",
        .statements = spool_statements,
        .n_statements = ST__MAX,
    };
    int r = db_open(&o, &s->db);
    if (r < 0)
        goto fail;
    r = load_meta(s, opt);
    if (r < 0) {
        db_rollback(s->db);
        goto fail;
    }
    r = db_commit(s->db);
    if (r < 0)
        goto fail;
    r = spool_recover_expired(s, lv_now_ms(), NULL);
    if (r < 0)
        goto fail;
    *ret = s;
    return 0;
fail:
    spool_close(s);
    return r;
}

Spool *spool_close(Spool *s)
{
    if (!s)
        return NULL;
    s->db = db_close(s->db);
    pthread_mutex_destroy(&s->dek_lock);
    free(s->path);
    free(s);
    return NULL;
}

int spool_schema_version(void)
{
    return (int)spool_schema.n_migrations;
}

const DbSchema *spool_db_schema(void)
{
    return &spool_schema;
}

/* The wrapped DEKs rows may still need: every DEK of the deks table when
 * the spool has one (rotation), else the single meta blob. */
static int file_deks(Db *db, SpoolFileInfo *info)
{
    int64_t has_table = 0;
    int r = db_query_int(db,
                         "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND"
                         " name = 'deks'",
                         &has_table);
    if (r < 0)
        return r;
    if (!has_table) {
        uint8_t *v = NULL;
        size_t n = 0;
        r = meta_blob(db, "wrapped_dek", &v, &n);
        if (r == -ENOENT)
            return 0;
        if (r < 0)
            return r;
        if (n != TOKEN_WRAPPED_DEK_LEN) {
            free(v);
            return lv_error_set(-EUCLEAN, "spool %s: wrapped DEK is %zu bytes, not %d", db_path(db),
                                n, TOKEN_WRAPPED_DEK_LEN);
        }
        info->wrapped_deks = v;
        info->n_deks = 1;
        return 0;
    }
    /* Schema 4 names each DEK's wrap algorithm; a file not migrated yet has
     * only RFC 5649 blobs (schema.c). */
    int64_t has_alg = 0;
    r = db_query_int(db, "SELECT count(*) FROM pragma_table_info('deks') WHERE name = 'wrap_alg'",
                     &has_alg);
    if (r < 0)
        return r;
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    r = db_prepare(db,
                   has_alg ? "SELECT id, wrapped, wrap_alg FROM deks ORDER BY id"
                           : "SELECT id, wrapped, 'rfc5649' FROM deks ORDER BY id",
                   &st);
    if (r < 0)
        return r;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *alg = (const char *)sqlite3_column_text(st, 2);
        if (!alg || strcmp(alg, TOKEN_WRAP_ALG) != 0)
            return lv_error_set(-EUCLEAN,
                                "spool %s: DEK %lld is wrapped with '%.32s', which this version "
                                "cannot unwrap (it knows %s)",
                                db_path(db), (long long)sqlite3_column_int64(st, 0),
                                alg ? alg : "(null)", TOKEN_WRAP_ALG);
        if ((size_t)sqlite3_column_bytes(st, 1) != TOKEN_WRAPPED_DEK_LEN)
            return lv_error_set(-EUCLEAN, "spool %s: DEK %lld: wrapped blob is %d bytes, not %d",
                                db_path(db), (long long)sqlite3_column_int64(st, 0),
                                sqlite3_column_bytes(st, 1), TOKEN_WRAPPED_DEK_LEN);
        uint8_t *v = realloc(info->wrapped_deks, (info->n_deks + 1) * TOKEN_WRAPPED_DEK_LEN);
        if (!v)
            return -ENOMEM;
        info->wrapped_deks = v;
        memcpy(v + info->n_deks * TOKEN_WRAPPED_DEK_LEN, sqlite3_column_blob(st, 1),
               TOKEN_WRAPPED_DEK_LEN);
        info->n_deks++;
    }
    return rc == SQLITE_DONE ? 0 : db_error(db, rc, "read the deks table");
}

int spool_file_info(Db *db, bool want_deks, SpoolFileInfo *ret)
{
    SpoolFileInfo info = {0};
    _cleanup_free_ uint8_t *sid = NULL, *inst = NULL;
    size_t sid_len = 0, inst_len = 0;
    int r = meta_blob(db, "spool_id", &sid, &sid_len);
    if (r == -ENOENT || (r >= 0 && sid_len != SPOOL_ID_LEN))
        return lv_error_set(LV_ERR_INPUT, "spool %s: no valid spool id in the metadata",
                            db_path(db));
    if (r >= 0)
        r = meta_blob(db, "installation_id", &inst, &inst_len);
    if (r == -ENOENT)
        r = 0;
    else if (r >= 0)
        snprintf(info.installation_id, sizeof(info.installation_id), "%s", (char *)inst);
    if (r >= 0 && want_deks)
        r = file_deks(db, &info);
    if (r >= 0)
        r = db_query_int(db, "SELECT count(*) FROM items", &info.items);
    if (r < 0) {
        spool_file_info_done(&info);
        return r;
    }
    *ret = info;
    return 0;
}

void spool_file_info_done(SpoolFileInfo *info)
{
    info->wrapped_deks = erase_and_free(info->wrapped_deks, info->n_deks * TOKEN_WRAPPED_DEK_LEN);
    info->n_deks = 0;
}

int spool_batch_begin(Spool *s)
{
    return db_group_begin(s->db);
}

int spool_batch_commit(Spool *s)
{
    return db_group_commit(s->db);
}
