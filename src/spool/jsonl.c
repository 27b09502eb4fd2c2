/* SPDX-License-Identifier: Apache-2.0 */
/* One line of an `enqueue --jsonl` batch: its members found and decoded
 * without copying the payload. */
#include "internal.h"

#include "canon.h"

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* Past the closing quote of the string starting at p, or NULL if the line
 * ends first. */
static const char *scan_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return NULL;
}

/* The end of the value starting at p. Structure inside the span is checked
 * later by canon_parse; this only needs to find where the span ends.
 * *truncated tells a line that ends inside the value. */
static const char *scan_value(const char *p, const char *end, bool *truncated)
{
    *truncated = false;
    if (p >= end) {
        *truncated = true;
        return NULL;
    }
    if (*p == '"') {
        const char *e = scan_string(p, end);
        *truncated = !e;
        return e;
    }
    if (*p == '{' || *p == '[') {
        size_t depth = 0;
        while (p < end) {
            if (*p == '"') {
                p = scan_string(p, end);
                if (!p)
                    break;
                continue;
            }
            if (*p == '{' || *p == '[')
                depth++;
            else if (*p == '}' || *p == ']') {
                if (--depth == 0)
                    return p + 1;
            }
            p++;
        }
        *truncated = true;
        return NULL;
    }
    const char *q = p;
    while (q < end && !strchr(",}] \t\r\n", *q))
        q++;
    if (q == end)
        *truncated = true; /* a bare value cannot end the line inside an object */
    return q == p ? NULL : q;
}

void spool_item_line_done(SpoolItemLine *l)
{
    if (!l)
        return;
    free(l->stream_id);
    free(l->source_ref);
    free(l->event_type);
    *l = (SpoolItemLine){0};
}

static int line_string(const char *name, const char *v, size_t n, char **ret)
{
    _cleanup_cjson_ cJSON *j = NULL;
    int r = canon_parse(v, n, 4096, name, &j);
    if (r < 0)
        return r;
    if (!cJSON_IsString(j))
        return lv_error_set(LV_ERR_INPUT, "%s: must be a string", name);
    *ret = strdup(j->valuestring);
    return *ret ? 0 : -ENOMEM;
}

int spool_item_parse_line(const char *line, size_t len, SpoolItemLine *ret)
{
    static const char *const names[] = {"stream_id", "source_ref", "event_type", "payload"};
    const char *end = line + len, *p = skip_ws(line, end);
    const char *vstart[4] = {0};
    size_t vlen[4] = {0};
    SpoolItemLine out = {0};
    int r;

    if (p == end)
        return lv_error_set(LV_ERR_INPUT, "empty line");
    if (*p != '{')
        return lv_error_set(LV_ERR_INPUT, "not a JSON object");
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            if (p >= end)
                return lv_error_set(LV_ERR_INPUT,
                                    "truncated JSON (the line ends inside the object)");
            if (*p != '"')
                return lv_error_set(LV_ERR_INPUT, "malformed JSON (expected a member name)");
            const char *kend = scan_string(p, end);
            if (!kend)
                return lv_error_set(LV_ERR_INPUT, "truncated JSON (the line ends inside a name)");
            _cleanup_cjson_ cJSON *key = NULL;
            r = canon_parse(p, (size_t)(kend - p), 1024, "member name", &key);
            if (r < 0)
                return r;
            if (!cJSON_IsString(key))
                return lv_error_set(LV_ERR_INPUT, "malformed JSON (expected a member name)");
            int k = -1;
            for (int i = 0; i < 4; i++)
                if (strcmp(key->valuestring, names[i]) == 0)
                    k = i;
            if (k < 0)
                return lv_error_set(LV_ERR_INPUT,
                                    "%.64s: unknown member (expected stream_id, source_ref, "
                                    "event_type, payload)",
                                    key->valuestring);
            if (vstart[k])
                return lv_error_set(LV_ERR_INPUT, "%s: duplicate member", names[k]);
            p = skip_ws(kend, end);
            if (p >= end)
                return lv_error_set(LV_ERR_INPUT, "%s: truncated JSON (no value)", names[k]);
            if (*p != ':')
                return lv_error_set(LV_ERR_INPUT, "%s: malformed JSON (expected ':')", names[k]);
            p = skip_ws(p + 1, end);
            bool truncated;
            const char *vend = scan_value(p, end, &truncated);
            if (truncated)
                return lv_error_set(
                    LV_ERR_INPUT, "%s: truncated JSON (the line ends inside the value)", names[k]);
            if (!vend)
                return lv_error_set(LV_ERR_INPUT, "%s: malformed JSON value", names[k]);
            vstart[k] = p;
            vlen[k] = (size_t)(vend - p);
            p = skip_ws(vend, end);
            if (p >= end)
                return lv_error_set(LV_ERR_INPUT,
                                    "truncated JSON (the line ends inside the object)");
            if (*p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (*p == '}') {
                p++;
                break;
            }
            return lv_error_set(LV_ERR_INPUT, "%s: malformed JSON (expected ',' or '}')", names[k]);
        }
    }
    if (skip_ws(p, end) != end)
        return lv_error_set(LV_ERR_INPUT, "malformed JSON (data after the object)");
    for (int i = 0; i < 4; i++)
        if (!vstart[i] && i != 2)
            return lv_error_set(LV_ERR_INPUT, "%s: missing", names[i]);
    if (vlen[3] > SPOOL_MAX_PAYLOAD)
        return lv_error_set(LV_ERR_TOOBIG, "payload: %zu bytes, over the limit of %d bytes",
                            vlen[3], SPOOL_MAX_PAYLOAD);
    r = line_string("stream_id", vstart[0], vlen[0], &out.stream_id);
    if (r >= 0)
        r = line_string("source_ref", vstart[1], vlen[1], &out.source_ref);
    if (r >= 0 && vstart[2])
        r = line_string("event_type", vstart[2], vlen[2], &out.event_type);
    if (r < 0) {
        spool_item_line_done(&out);
        return r;
    }
    out.payload = vstart[3];
    out.payload_len = vlen[3];
    *ret = out;
    return 0;
}
