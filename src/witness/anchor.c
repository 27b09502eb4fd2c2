/* SPDX-License-Identifier: Apache-2.0 */
/* The witness database's state anchored on the token (docs/witness.md, "The
 * anchor"): the database's id, generation and statement digest kept in meta,
 * and the token data objects that hold the same triple, bound to the signing
 * key, checked before anything is signed and written after every COMMIT. */
#include "internal.h"

#include <inttypes.h>

#define ANCHOR_APPLICATION "attesto.local-vault.witness-anchor.v1"
#define ANCHOR_LABEL       "lv-witness-anchor:"
#define ANCHOR_MAX         32 /* anchors read at once; more is a damaged token */
#define ZERO_DIGEST        "0000000000000000000000000000000000000000000000000000000000000000"

const char *witness_integrity_cause(int r)
{
    if (r == LV_ERR_ROLLBACK)
        return "state_rollback";
    if (r == LV_ERR_FOREIGN)
        return "foreign_database";
    return NULL;
}

/* ---- the database's side -------------------------------------------------------------------- */

static int meta_get(Witness *w, const char *key, char *out, size_t cap)
{
    _cleanup_finalize_ sqlite3_stmt *s = NULL;
    int r = db_prepare(w->db, "SELECT value FROM meta WHERE key = ?1", &s);
    if (r < 0)
        return r;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE)
        return lv_error_set(-ENOENT,
                            "witness database %s: no %s in meta (schema 1, opened read-only? open "
                            "it once read-write to migrate)",
                            w->path, key);
    if (rc != SQLITE_ROW)
        return db_error(w->db, rc, "read meta");
    const unsigned char *v = sqlite3_column_text(s, 0);
    int n = sqlite3_column_bytes(s, 0);
    if (!v || n <= 0 || (size_t)n >= cap)
        return lv_error_set(-EIO, "witness database %s: damaged meta %s", w->path, key);
    memcpy(out, v, (size_t)n);
    out[n] = '\0';
    return 0;
}

static int meta_set(Witness *w, const char *key, const char *value)
{
    _cleanup_finalize_ sqlite3_stmt *s = NULL;
    int r = db_prepare(w->db, "UPDATE meta SET value = ?2 WHERE key = ?1", &s);
    if (r < 0)
        return r;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, value, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
        return db_error(w->db, rc, "write meta");
    if (sqlite3_changes(db_handle(w->db)) != 1)
        return lv_error_set(-EIO, "witness database %s: no %s in meta", w->path, key);
    return 0;
}

int witness_state_read(Witness *w, WitnessState *ret)
{
    WitnessState st = {0};
    char gen[24];
    int r;
    if ((r = meta_get(w, "database_id", st.database_id, sizeof(st.database_id))) < 0 ||
        (r = meta_get(w, "generation", gen, sizeof(gen))) < 0 ||
        (r = meta_get(w, "digest", st.digest, sizeof(st.digest))) < 0 ||
        (r = meta_get(w, "previous_digest", st.previous_digest, sizeof(st.previous_digest))) < 0)
        return r;
    char *end = NULL;
    errno = 0;
    long long g = strtoll(gen, &end, 10);
    if (!is_lower_hex(st.database_id, WITNESS_DATABASE_ID_LEN) ||
        !is_lower_hex(st.digest, WITNESS_HASH_HEX_LEN) ||
        !is_lower_hex(st.previous_digest, WITNESS_HASH_HEX_LEN) || errno != 0 || !end ||
        *end != '\0' || end == gen || g < 0)
        return lv_error_set(-EIO, "witness database %s: damaged state in meta", w->path);
    st.generation = g;
    *ret = st;
    return 0;
}

/* digest' = SHA-256(digest || 0x0A || statement_hash), both as lowercase hex. */
static void chain(const char *digest, const char *statement_hash,
                  char out[WITNESS_HASH_HEX_LEN + 1])
{
    char buf[2 * WITNESS_HASH_HEX_LEN + 1];
    memcpy(buf, digest, WITNESS_HASH_HEX_LEN);
    buf[WITNESS_HASH_HEX_LEN] = '\n';
    memcpy(buf + WITNESS_HASH_HEX_LEN + 1, statement_hash, WITNESS_HASH_HEX_LEN);
    lv_sha256_hex(buf, sizeof(buf), out);
}

int witness_state_chain(Witness *w, const char *statement_hash)
{
    char d[WITNESS_HASH_HEX_LEN + 1], next[WITNESS_HASH_HEX_LEN + 1];
    int r = meta_get(w, "digest", d, sizeof(d));
    if (r < 0)
        return r;
    if (!is_lower_hex(d, WITNESS_HASH_HEX_LEN) ||
        !is_lower_hex(statement_hash, WITNESS_HASH_HEX_LEN))
        return lv_error_set(-EIO, "witness database %s: damaged digest in meta", w->path);
    chain(d, statement_hash, next);
    return meta_set(w, "digest", next);
}

int witness_state_advance(Witness *w, const WitnessState *before, int64_t generation,
                          WitnessState *ret)
{
    char gen[24];
    snprintf(gen, sizeof(gen), "%" PRId64, generation);
    int r = meta_set(w, "generation", gen);
    if (r >= 0)
        r = meta_set(w, "previous_digest", before->digest);
    if (r >= 0)
        r = witness_state_read(w, ret);
    if (r < 0)
        return r;
    _cleanup_finalize_ sqlite3_stmt *s = NULL;
    if ((r = db_prepare(w->db, "INSERT INTO generations VALUES (?1, ?2)", &s)) < 0)
        return r;
    sqlite3_bind_int64(s, 1, generation);
    sqlite3_bind_text(s, 2, ret->digest, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    return rc == SQLITE_DONE ? 0 : db_error(w->db, rc, "record the generation");
}

/* ---- the token's side ----------------------------------------------------------------------- */

typedef struct Anchor {
    unsigned long handle;
    char database_id[WITNESS_DATABASE_ID_LEN + 1];
    int64_t generation;
    char digest[WITNESS_HASH_HEX_LEN + 1];
} Anchor;

/* Outside any transaction: whether this database's history holds st (its
 * digest at st's generation) and is now the state of the anchor top (or one
 * batch ahead of it). Then top descends from st: the digests chain. */
static bool descends(Witness *w, const WitnessState *st, const Anchor *top);

/* The anchors' label names the signing key: the first 32 hex digits of
 * SHA-256(public key); the value carries all 64. */
typedef struct AnchorKey {
    char label[sizeof(ANCHOR_LABEL) + 32];
    char key[WITNESS_HASH_HEX_LEN + 1];
} AnchorKey;

static int anchor_key(Token *t, AnchorKey *ret)
{
    uint8_t pk[TOKEN_ED25519_PK_LEN];
    int r = token_public_key(t, pk);
    if (r < 0)
        return r;
    lv_sha256_hex(pk, sizeof(pk), ret->key);
    snprintf(ret->label, sizeof(ret->label), ANCHOR_LABEL "%.32s", ret->key);
    return 0;
}

static int anchor_format(const AnchorKey *k, const char *database_id, int64_t generation,
                         const char *digest, char *out, size_t cap)
{
    int n = snprintf(
        out, cap, ANCHOR_APPLICATION "\nkey=%s\ndatabase=%s\ngeneration=%" PRId64 "\ndigest=%s\n",
        k->key, database_id, generation, digest);
    return n > 0 && (size_t)n < cap ? n : -ENOBUFS;
}

/* Strict: the value must be exactly what anchor_format writes. */
static int anchor_parse(const AnchorKey *k, const TokenData *d, Anchor *ret)
{
    char key[65], db[33], digest[65], again[TOKEN_DATA_VALUE_MAX + 1],
        text[TOKEN_DATA_VALUE_MAX + 1];
    int64_t gen = -1;
    memcpy(text, d->value, d->len);
    text[d->len] = '\0';
    if (strlen(text) != d->len ||
        sscanf(text,
               ANCHOR_APPLICATION "\nkey=%64[0-9a-f]\ndatabase=%32[0-9a-f]\ngeneration=%" SCNd64
                                  "\ndigest=%64[0-9a-f]\n",
               key, db, &gen, digest) != 4 ||
        gen < 0 || strcmp(key, k->key) != 0 || strlen(db) != WITNESS_DATABASE_ID_LEN ||
        strlen(digest) != WITNESS_HASH_HEX_LEN)
        goto bad;
    int n = anchor_format(k, db, gen, digest, again, sizeof(again));
    if (n < 0 || (size_t)n != d->len || memcmp(again, text, d->len) != 0)
        goto bad;
    *ret = (Anchor){.handle = d->handle, .generation = gen};
    memcpy(ret->database_id, db, sizeof(ret->database_id));
    memcpy(ret->digest, digest, sizeof(ret->digest));
    return 0;
bad:
    return lv_error_set(LV_ERR_FOREIGN,
                        "foreign_database: the token holds a damaged witness anchor (%s); "
                        "see witness-state show",
                        k->label);
}

/* Every anchor of the key, read from the token. */
static int anchors_read(Token *t, const AnchorKey *k, Anchor *ret, size_t *ret_n)
{
    _cleanup_free_ TokenData *d = calloc(ANCHOR_MAX, sizeof(*d));
    if (!d)
        return -ENOMEM;
    size_t n = 0;
    int r = token_data_find(t, ANCHOR_APPLICATION, k->label, d, ANCHOR_MAX, &n);
    if (r < 0)
        return r;
    if (n > ANCHOR_MAX)
        return lv_error_set(LV_ERR_FOREIGN,
                            "foreign_database: %zu witness anchors on the token (%s); at most %d "
                            "are expected",
                            n, k->label, ANCHOR_MAX);
    for (size_t i = 0; i < n; i++)
        if ((r = anchor_parse(k, &d[i], &ret[i])) < 0)
            return r;
    *ret_n = n;
    return 0;
}

static bool anchor_is(const Anchor *a, const char *database_id, int64_t generation,
                      const char *digest)
{
    return a->generation == generation && strcmp(a->database_id, database_id) == 0 &&
           strcmp(a->digest, digest) == 0;
}

/* Destroys the anchors below generation; a failure is left for the next
 * time (an old anchor is harmless: the highest one counts). */
static void anchors_prune(Token *t, const Anchor *a, size_t n, int64_t generation)
{
    for (size_t i = 0; i < n; i++)
        if (a[i].generation < generation)
            (void)token_data_destroy(t, a[i].handle);
}

/* Writes the anchor of st, reads the anchors back and succeeds only if no
 * other state claims st's generation or a later one: of two writers of one
 * generation, the later one's read sees both. Then prunes older anchors. */
static int anchor_publish(Witness *w, Token *t, const AnchorKey *k, const WitnessState *st)
{
    char value[TOKEN_DATA_VALUE_MAX];
    int len = anchor_format(k, st->database_id, st->generation, st->digest, value, sizeof(value));
    if (len < 0)
        return -ENOBUFS;
    int r = token_data_create(t, ANCHOR_APPLICATION, k->label, (const uint8_t *)value, (size_t)len);
    if (r < 0)
        return r;
    Anchor a[ANCHOR_MAX];
    size_t n = 0;
    if ((r = anchors_read(t, k, a, &n)) < 0)
        return r;
    bool ours = false, moved_on = false;
    for (size_t i = 0; i < n; i++) {
        if (anchor_is(&a[i], st->database_id, st->generation, st->digest)) {
            ours = true;
            continue;
        }
        if (a[i].generation > st->generation && descends(w, st, &a[i])) {
            moved_on = true; /* another process on this database moved on from this batch */
            continue;
        }
        if (a[i].generation > st->generation)
            return lv_error_set(-EAGAIN,
                                "witness database %s: the anchor moved on to generation %" PRId64
                                " while this batch (generation %" PRId64
                                ") was anchored (another process on this database?); nothing "
                                "answered, submit again to get the stored statement",
                                w->path, a[i].generation, st->generation);
        if (a[i].generation == st->generation) {
            /* Two states answer for one generation: neither may answer.
             * Ours goes, so that the other can go on if it answered. */
            for (size_t m = 0; m < n; m++)
                if (anchor_is(&a[m], st->database_id, st->generation, st->digest)) {
                    (void)token_data_destroy(t, a[m].handle);
                    break;
                }
            return lv_error_set(LV_ERR_FOREIGN,
                                "foreign_database: witness database %s (id %s) and another "
                                "database (id %s) both reached generation %" PRId64
                                " of this key's anchor; nothing answered",
                                w->path, st->database_id, a[i].database_id, st->generation);
        }
    }
    /* Ours may be gone already: pruned by the process that moved on. */
    if (!ours && !moved_on)
        return lv_error_set(LV_ERR_TOKEN, "the witness anchor just written is not on the token");
    anchors_prune(t, a, n, st->generation);
    return 0;
}

static bool descends(Witness *w, const WitnessState *st, const Anchor *top)
{
    WitnessState now;
    char digest[WITNESS_HASH_HEX_LEN + 1] = "";
    bool ok = false;
    /* In the roll-forward of witness_anchor_check the write transaction is
     * open already: read inside it, and leave it open. */
    bool own = sqlite3_get_autocommit(db_handle(w->db));
    if (own && db_exec(w->db, "BEGIN") < 0)
        return false;
    _cleanup_finalize_ sqlite3_stmt *s = NULL;
    if (db_prepare(w->db, "SELECT digest FROM generations WHERE generation = ?1", &s) >= 0) {
        sqlite3_bind_int64(s, 1, st->generation);
        if (sqlite3_step(s) == SQLITE_ROW)
            db_column_copy(s, 0, digest, sizeof(digest));
        sqlite3_reset(s);
    }
    if (strcmp(digest, st->digest) == 0 && witness_state_read(w, &now) >= 0 &&
        strcmp(now.database_id, top->database_id) == 0)
        ok = (now.generation == top->generation && strcmp(now.digest, top->digest) == 0) ||
             (now.generation == top->generation + 1 &&
              strcmp(now.previous_digest, top->digest) == 0);
    if (own)
        sqlite3_exec(db_handle(w->db), "ROLLBACK", NULL, NULL, NULL);
    lv_error_clear();
    return ok;
}

static bool state_equal(const WitnessState *a, const WitnessState *b)
{
    return a->generation == b->generation && strcmp(a->database_id, b->database_id) == 0 &&
           strcmp(a->digest, b->digest) == 0 && strcmp(a->previous_digest, b->previous_digest) == 0;
}

/* Remembers st as anchored (or forgets, st NULL). */
static void remember(Witness *w, const WitnessState *st)
{
    if (!st) {
        free(w->anchored);
        w->anchored = NULL;
        return;
    }
    if (!w->anchored && !(w->anchored = malloc(sizeof(*w->anchored))))
        return;
    *w->anchored = *st;
}

int witness_anchor_commit(Witness *w, Token *t, const WitnessState *st)
{
    AnchorKey k;
    int r = anchor_key(t, &k);
    if (r >= 0)
        r = anchor_publish(w, t, &k, st);
    remember(w, r >= 0 ? st : NULL);
    return r;
}

/* The highest anchor; -ENOENT when there is none. Two different states at
 * the highest generation: refused. */
static int anchor_top(const Witness *w, const Anchor *a, size_t n, const Anchor **ret)
{
    const Anchor *top = NULL;
    for (size_t i = 0; i < n; i++)
        if (!top || a[i].generation > top->generation)
            top = &a[i];
    if (!top)
        return -ENOENT;
    for (size_t i = 0; i < n; i++)
        if (a[i].generation == top->generation &&
            !anchor_is(&a[i], top->database_id, top->generation, top->digest))
            return lv_error_set(LV_ERR_FOREIGN,
                                "foreign_database: two databases (ids %s and %s) claim generation "
                                "%" PRId64 " of this key's anchor; witness database %s is refused "
                                "until an operator adopts one (witness-state adopt --confirm)",
                                top->database_id, a[i].database_id, top->generation, w->path);
    *ret = top;
    return 0;
}

static int judge(Witness *w, const WitnessState *st, const Anchor *top)
{
    if (strcmp(top->database_id, st->database_id) != 0)
        return lv_error_set(LV_ERR_FOREIGN,
                            "foreign_database: witness database %s has id %s, the token's anchor "
                            "names %s (a second, re-created or copied database?); nothing signed",
                            w->path, st->database_id, top->database_id);
    if (top->generation > st->generation)
        return lv_error_set(LV_ERR_ROLLBACK,
                            "state_rollback: witness database %s is at generation %" PRId64
                            ", its anchor on the token at %" PRId64
                            " (a restored backup?); nothing signed",
                            w->path, st->generation, top->generation);
    if (top->generation == st->generation && strcmp(top->digest, st->digest) != 0)
        return lv_error_set(LV_ERR_ROLLBACK,
                            "state_rollback: witness database %s at generation %" PRId64
                            " holds another history than its anchor (digest %.16s…, anchored "
                            "%.16s…); nothing signed",
                            w->path, st->generation, st->digest, top->digest);
    if (top->generation == st->generation - 1 && strcmp(top->digest, st->previous_digest) != 0)
        return lv_error_set(LV_ERR_ROLLBACK,
                            "state_rollback: witness database %s at generation %" PRId64
                            " does not extend its anchor at %" PRId64 "; nothing signed",
                            w->path, st->generation, top->generation);
    if (top->generation < st->generation - 1)
        return lv_error_set(LV_ERR_ROLLBACK,
                            "state_rollback: the token's anchor (generation %" PRId64
                            ") is behind witness database %s (generation %" PRId64
                            ") by more than one batch (the token's objects were restored?); "
                            "nothing signed",
                            top->generation, w->path, st->generation);
    return 0;
}

static bool state_empty(const WitnessState *st)
{
    return st->generation == 0 && strcmp(st->digest, ZERO_DIGEST) == 0;
}

static int anchor_check_once(Witness *w, Token *t, const WitnessState *st)
{
    AnchorKey k;
    Anchor a[ANCHOR_MAX];
    size_t n = 0;
    const Anchor *top = NULL;
    int r = anchor_key(t, &k);
    if (r >= 0)
        r = anchors_read(t, &k, a, &n);
    if (r >= 0)
        r = anchor_top(w, a, n, &top);
    if (r == -ENOENT) {
        /* A first run: an empty database anchors itself at its first batch. */
        if (state_empty(st))
            return 0;
        return lv_error_set(LV_ERR_FOREIGN,
                            "foreign_database: witness database %s (id %s, generation %" PRId64
                            ") is not anchored: the token holds no anchor for this key; nothing "
                            "signed",
                            w->path, st->database_id, st->generation);
    }
    if (r < 0 || (r = judge(w, st, top)) < 0)
        return r;
    /* One unanswered batch ahead (a crash after COMMIT): roll forward. */
    if (top->generation == st->generation - 1)
        return anchor_publish(w, t, &k, st);
    anchors_prune(t, a, n, top->generation);
    return 0;
}

int witness_anchor_check(Witness *w, Token *t, const WitnessState *st)
{
    /* Unchanged since this process anchored it: skipping the read costs no
     * safety. Had another copy of this database moved the anchor on
     * meanwhile, this batch's own anchor would be refused after its COMMIT
     * (anchor_publish), so it could not answer. */
    if (w->anchored && state_equal(w->anchored, st))
        return 0;
    /* A refusal must hold over a few reads: SoftHSM's processes see each
     * other's new token objects only once they re-index the token
     * directory, so one search may show an anchor destroyed and not yet its
     * successor. A real refusal costs ~0.5 s more. */
    int r = 0;
    for (int i = 0; i < 6; i++) {
        if (i > 0)
            usleep(100 * 1000);
        r = anchor_check_once(w, t, st);
        if (!witness_integrity_cause(r))
            break;
    }
    remember(w, r >= 0 ? st : NULL);
    return r;
}

/* ---- witness-state -------------------------------------------------------------------------- */

static cJSON *state_json(const char *database_id, int64_t generation, const char *digest)
{
    cJSON *o = cJSON_CreateObject();
    if (o && witness_json_str(o, "database_id", database_id) &&
        witness_json_int(o, "generation", generation) && witness_json_str(o, "digest", digest))
        return o;
    cJSON_Delete(o);
    return NULL;
}

int witness_state_show(Witness *w, Token *t, cJSON **ret)
{
    WitnessState st;
    AnchorKey k;
    Anchor a[ANCHOR_MAX];
    size_t n = 0;
    const Anchor *top = NULL;
    int r = witness_state_read(w, &st);
    if (r < 0 || (r = anchor_key(t, &k)) < 0 || (r = anchors_read(t, &k, a, &n)) < 0)
        return r;
    _cleanup_cjson_ cJSON *o = cJSON_CreateObject();
    cJSON *anchors = NULL;
    if (!o || !cJSON_AddStringToObject(o, "path", w->path) ||
        !cJSON_AddItemToObject(o, "database",
                               state_json(st.database_id, st.generation, st.digest)) ||
        !(anchors = cJSON_AddArrayToObject(o, "anchors")))
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (!cJSON_AddItemToArray(anchors,
                                  state_json(a[i].database_id, a[i].generation, a[i].digest)))
            return -ENOMEM;
    lv_error_clear();
    int v = anchor_top(w, a, n, &top);
    if (v == -ENOENT)
        v = state_empty(&st) ? 0
                             : lv_error_set(LV_ERR_FOREIGN,
                                            "foreign_database: the token holds no anchor for this "
                                            "key and the database has history");
    else if (v >= 0)
        v = judge(w, &st, top);
    const char *cause = witness_integrity_cause(v);
    if (!cJSON_AddItemToObject(o, "anchor",
                               top ? state_json(top->database_id, top->generation, top->digest)
                                   : cJSON_CreateNull()) ||
        !cJSON_AddStringToObject(o, "state",
                                 v >= 0 ? (top && top->generation == st.generation - 1
                                               ? "ahead_by_one_batch"
                                               : "consistent")
                                        : (cause ? cause : "error")) ||
        !cJSON_AddStringToObject(o, "detail", v >= 0 ? "" : lv_error()))
        return -ENOMEM;
    lv_error_clear();
    *ret = TAKE_PTR(o);
    return 0;
}

int witness_state_adopt(Witness *w, Token *t, char **ret_doc, size_t *ret_len)
{
    if (db_readonly(w->db))
        return lv_error_set(-EROFS, "witness database %s: opened read-only", w->path);
    AnchorKey k;
    Anchor a[ANCHOR_MAX];
    size_t n = 0;
    int r = anchor_key(t, &k);
    if (r < 0)
        return r;
    _cleanup_cjson_ cJSON *statement = NULL;
    _cleanup_free_ char *doc = NULL;
    size_t doc_len = 0;
    Canon st_canon = {0};
    _cleanup_finalize_ sqlite3_stmt *ins = NULL;
    WitnessState before, after;
    char now[32];
    if ((r = db_exec(w->db, "BEGIN IMMEDIATE")) < 0)
        return r;
    if ((r = witness_state_read(w, &before)) < 0 || (r = anchors_read(t, &k, a, &n)) < 0)
        goto fail;
    /* The adopted state lands above every anchor on the token, so that it
     * is the highest whatever was there. */
    int64_t top_gen = -1;
    const Anchor *prev = NULL;
    for (size_t i = 0; i < n; i++)
        if (a[i].generation > top_gen) {
            top_gen = a[i].generation;
            prev = &a[i];
        }
    int64_t gen = (before.generation > top_gen ? before.generation : top_gen) + 1;
    lv_format_time(lv_now_ms(), now);
    lv_error_clear();
    int why = prev ? judge(w, &before, prev) : (state_empty(&before) ? 0 : LV_ERR_FOREIGN);
    const char *cause = witness_integrity_cause(why);
    cJSON *db = NULL;
    if (!(statement = cJSON_CreateObject()) ||
        !witness_json_str(statement, "kind", "state_adoption") ||
        !witness_json_str(statement, "adopted_at", now) ||
        !witness_json_str(statement, "cause", cause ? cause : "none") ||
        !(db = state_json(before.database_id, before.generation, before.digest)) ||
        !cJSON_AddItemToObject(statement, "database", db) ||
        !cJSON_AddItemToObject(statement, "previous_anchor",
                               prev ? state_json(prev->database_id, prev->generation, prev->digest)
                                    : cJSON_CreateNull()) ||
        !witness_json_int(statement, "adopted_generation", gen)) {
        r = -ENOMEM;
        goto fail;
    }
    lv_error_clear();
    if ((r = witness_canon_statement(statement, &st_canon)) < 0 ||
        (r = witness_sign_statement(w, t, WITNESS_ADOPTION_DOMAIN, "state_adoption", &st_canon,
                                    NULL, NULL, &doc, &doc_len)) < 0)
        goto fail;
    if ((r = db_prepare(w->db,
                        "INSERT INTO state_adoptions (adopted_at, statement_hash, document) "
                        "VALUES (?1, ?2, ?3)",
                        &ins)) < 0)
        goto fail;
    sqlite3_bind_text(ins, 1, now, -1, SQLITE_STATIC);
    sqlite3_bind_text(ins, 2, st_canon.hash, -1, SQLITE_STATIC);
    sqlite3_bind_text(ins, 3, doc, -1, SQLITE_STATIC);
    int rc = sqlite3_step(ins);
    if (rc != SQLITE_DONE) {
        r = db_error(w->db, rc, "store the state adoption");
        goto fail;
    }
    if ((r = witness_state_chain(w, st_canon.hash)) < 0 ||
        (r = witness_state_advance(w, &before, gen, &after)) < 0 ||
        (r = db_exec(w->db, "COMMIT")) < 0)
        goto fail;
    witness_canon_done(&st_canon);
    /* Only after COMMIT: the new anchor, then every other one goes. */
    if ((r = anchor_publish(w, t, &k, &after)) < 0)
        return r;
    Anchor left[ANCHOR_MAX];
    size_t nl = 0;
    if (anchors_read(t, &k, left, &nl) >= 0)
        for (size_t i = 0; i < nl; i++)
            if (!anchor_is(&left[i], after.database_id, after.generation, after.digest))
                (void)token_data_destroy(t, left[i].handle);
    *ret_doc = TAKE_PTR(doc);
    *ret_len = doc_len;
    return 0;
fail:
    witness_canon_done(&st_canon);
    if (!sqlite3_get_autocommit(db_handle(w->db)))
        sqlite3_exec(db_handle(w->db), "ROLLBACK", NULL, NULL, NULL);
    return r;
}
