/* SPDX-License-Identifier: Apache-2.0 */
/* RFC 8785 canonical JSON (placeholder until implemented). */
#include "lv.h"
#include "canon.h"

int canon_parse(const char *in, size_t len, size_t max_len, const char *path_prefix, cJSON **ret)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

int canon_serialize(const cJSON *node, char **ret, size_t *ret_len)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}

int canon_json(const char *in, size_t len, size_t max_len, const char *path_prefix, char **ret, size_t *ret_len)
{
    return lv_error_set(-ENOSYS, "not implemented yet");
}
