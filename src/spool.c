/* SPDX-License-Identifier: Apache-2.0 */
/* Encrypted spool (placeholder until implemented). */
#include "lv.h"
#include "spool.h"

int spool_open(const SpoolOptions *opt, Token *tok, Spool **ret)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

Spool *spool_close(Spool *s)
{
    return NULL;
}

int spool_enqueue(Spool *s, const SpoolItemIn *items, size_t n, SpoolEnqueueResult *ret_results)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

int spool_lease_due(Spool *s, const char *owner, int64_t now_ms, int64_t lease_ms, size_t max, SpoolLease **ret_leases, size_t *ret_n)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

void spool_leases_free(SpoolLease *l, size_t n)
{
}

int spool_mark_receipted(Spool *s, int64_t id, const char *owner, const char *receipt_json)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

int spool_mark_retry(Spool *s, int64_t id, const char *owner, const char *reason, int64_t next_attempt_ms, bool burn_attempt, bool *ret_dead)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

int spool_mark_dead(Spool *s, int64_t id, const char *owner, const char *reason)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

int spool_release_leases(Spool *s, const char *owner)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

int spool_recover_expired(Spool *s, int64_t now_ms, size_t *ret_n)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

int64_t spool_backoff_ms(int attempts, int64_t retry_after_ms)
{
    return 0;
}

int spool_stats(Spool *s, SpoolStats *ret)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

int spool_set_pause(Spool *s, int64_t until_ms, const char *reason)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}
