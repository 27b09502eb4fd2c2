/* SPDX-License-Identifier: Apache-2.0 */
/* Sealing rows on the token: version || IV || ciphertext || tag, with an
 * AAD that binds the row to this spool, its stream, source_ref and envelope
 * hash; and opening them, with a self-test before a row is condemned. */
#include "internal.h"

#define ROW_VERSION  0x01
#define ROW_OVERHEAD (1 + TOKEN_GCM_IV_LEN + TOKEN_GCM_TAG_LEN)
#define AAD_DOMAIN   "attesto.local-vault.spool-row.v1"

static void put_field(uint8_t **p, const void *v, size_t n)
{
    (*p)[0] = (uint8_t)(n >> 24);
    (*p)[1] = (uint8_t)(n >> 16);
    (*p)[2] = (uint8_t)(n >> 8);
    (*p)[3] = (uint8_t)n;
    memcpy(*p + 4, v, n);
    *p += 4 + n;
}

/* AAD: each part length-prefixed (4 bytes, big endian), so no two different
 * bindings share an encoding: domain, row kind, spool id, stream_id,
 * source_ref, envelope hash. */
#define AAD_MAX (6 * 4 + sizeof(AAD_DOMAIN) + 8 + SPOOL_ID_LEN + 128 + 128 + 64)
static size_t build_aad(const Spool *s, const char *kind, const char *stream_id,
                        const char *source_ref, const char *envelope_hash, uint8_t out[AAD_MAX])
{
    uint8_t *p = out;
    put_field(&p, AAD_DOMAIN, strlen(AAD_DOMAIN));
    put_field(&p, kind, strlen(kind));
    put_field(&p, s->spool_id, SPOOL_ID_LEN);
    put_field(&p, stream_id, strlen(stream_id));
    put_field(&p, source_ref, strlen(source_ref));
    put_field(&p, envelope_hash, strlen(envelope_hash));
    return (size_t)(p - out);
}

/* version || IV || ciphertext || tag */
int spool_seal(Spool *s, const char *kind, const char *stream_id, const char *source_ref,
               const char *envelope_hash, const void *pt, size_t n, uint8_t **ret, size_t *ret_len)
{
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "spool: opened without the token's data key");
    uint8_t aad[AAD_MAX];
    size_t aad_len = build_aad(s, kind, stream_id, source_ref, envelope_hash, aad);
    uint8_t *row = malloc(n + ROW_OVERHEAD);
    if (!row)
        return -ENOMEM;
    row[0] = ROW_VERSION;
    unsigned slot;
    int r = spool_dek_find(s, s->cur_dek, &slot);
    if (r < 0) {
        free(row);
        return r;
    }
    r = lv_random(row + 1, TOKEN_GCM_IV_LEN);
    if (r < 0) {
        free(row);
        return lv_error_set(r, "spool: random IV: %s", strerror(-r));
    }
    r = token_aead_encrypt_slot(s->tok, slot, row + 1, aad, aad_len, pt, n,
                                row + 1 + TOKEN_GCM_IV_LEN);
    if (r < 0) {
        free(row);
        return r;
    }
    *ret = row;
    *ret_len = n + ROW_OVERHEAD;
    return 0;
}

/* Seals and opens a fresh random block with the DEK in a token slot: 0 when
 * the token's AES-GCM with this DEK works now, a token error otherwise. */
static int dek_self_test(Spool *s, unsigned slot)
{
    uint8_t iv[TOKEN_GCM_IV_LEN], block[32] = {0}, ct[32 + TOKEN_GCM_TAG_LEN], back[32];
    static const uint8_t aad[] = "attesto.local-vault.dek-self-test.v1";
    int r = lv_random(iv, sizeof(iv));
    if (r >= 0)
        r = lv_random(block, sizeof(block));
    if (r >= 0)
        r = token_aead_encrypt_slot(s->tok, slot, iv, aad, sizeof(aad) - 1, block, sizeof(block),
                                    ct);
    if (r >= 0)
        r = token_aead_decrypt_slot(s->tok, slot, iv, aad, sizeof(aad) - 1, ct, sizeof(ct), back);
    if (r >= 0 && memcmp(back, block, sizeof(block)) != 0)
        r = lv_error_set(LV_ERR_TOKEN, "AES-GCM self-test: the block came back different");
    explicit_bzero(block, sizeof(block));
    explicit_bzero(back, sizeof(back));
    return r < 0 ? (lv_is_token_error(r) ? r : LV_ERR_TOKEN) : 0;
}

/* LV_ERR_CRYPTO with a reason for a row that is not ours as stored; any
 * other error is the token's and must not condemn the row. */
int spool_unseal(Spool *s, const char *kind, int64_t dek_id, const char *stream_id,
                 const char *source_ref, const char *envelope_hash, const uint8_t *row, size_t n,
                 char **ret, size_t *ret_len)
{
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "spool: opened without the token's data key");
    if (n < ROW_OVERHEAD || row[0] != ROW_VERSION)
        return lv_error_set(LV_ERR_CRYPTO, "row_format_invalid: %s row has an unknown format",
                            kind);
    uint8_t aad[AAD_MAX];
    size_t aad_len = build_aad(s, kind, stream_id, source_ref, envelope_hash, aad);
    size_t pt_len = n - ROW_OVERHEAD;
    unsigned slot;
    int r = spool_dek_find(s, dek_id, &slot);
    if (r < 0)
        return r;
    char *pt = malloc(pt_len + 1);
    if (!pt)
        return -ENOMEM;
    r = token_aead_decrypt_slot(s->tok, slot, row + 1, aad, aad_len, row + 1 + TOKEN_GCM_IV_LEN,
                                n - 1 - TOKEN_GCM_IV_LEN, (uint8_t *)pt);
    if (r == LV_ERR_CRYPTO) {
        /* A token reports a tag mismatch and its own failure alike (SoftHSM
         * says CKR_GENERAL_ERROR for both). Quarantine is for rows, so a
         * row is condemned only when the row's own DEK is shown to work
         * right now and the row still fails a second time. */
        char first[256];
        snprintf(first, sizeof(first), "%s", lv_error());
        r = dek_self_test(s, slot);
        if (r < 0) {
            erase_and_free(pt, pt_len + 1);
            return lv_error_set(LV_ERR_TOKEN,
                                "token failed the data key self-test after a %s row did not "
                                "decrypt (%s); the row is left as it is: %s",
                                kind, first, lv_error());
        }
        r = token_aead_decrypt_slot(s->tok, slot, row + 1, aad, aad_len, row + 1 + TOKEN_GCM_IV_LEN,
                                    n - 1 - TOKEN_GCM_IV_LEN, (uint8_t *)pt);
    }
    if (r < 0) {
        erase_and_free(pt, pt_len + 1);
        if (r == LV_ERR_CRYPTO)
            return lv_error_set(LV_ERR_CRYPTO,
                                "row_decrypt_failed: %s row fails authentication (altered, "
                                "copied or swapped)",
                                kind);
        return r;
    }
    pt[pt_len] = '\0';
    *ret = pt;
    *ret_len = pt_len;
    return 0;
}
