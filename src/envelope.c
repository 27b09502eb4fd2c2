/* SPDX-License-Identifier: Apache-2.0 */
/* Relay envelope (placeholder until implemented). */
#include "lv.h"
#include "envelope.h"

int envelope_build(Token *t, const EnvelopeInput *in, char **ret_body, size_t *ret_len, char ret_hash[65])
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

int envelope_verify(const char *body, size_t len, const uint8_t pk[32])
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

void envelope_check_ack(long http_status, const char *body, size_t len, const char *envelope_hash, const char *stream_id, const char *event_id, AckCheck *ret)
{
}

void ack_check_done(AckCheck *a)
{
}
