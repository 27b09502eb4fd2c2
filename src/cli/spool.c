/* SPDX-License-Identifier: Apache-2.0 */
/* The spool's verbs for people: status, list, show, dead-letter (list,
 * requeue) and purge. */
#include <stdio.h>
#include <string.h>

#include "canon.h"
#include "cli.h"
#include "envelope.h"
#include "lv.h"
#include "spool.h"

#define LIST_DEFAULT 100
#define LIST_MAX     10000

static void print_time_member(cJSON *o, const char *name, int64_t ms)
{
    if (ms <= 0) {
        cJSON_AddNullToObject(o, name);
        return;
    }
    char t[32];
    lv_format_time(ms, t);
    cJSON_AddStringToObject(o, name, t);
}

static bool want_json(const Config *cfg, bool json_flag)
{
    return json_flag || !cli_human(cfg);
}

typedef struct StatusArgs {
    bool json;
} StatusArgs;

static const CliOption status_options[] = {
    CLI_FLAG_OPT("json", StatusArgs, json, "JSON even on a terminal"),
    {0},
};

static const CliCommand status_command = {
    .name = "status",
    .about = "Counts per state, the oldest queued item, the next attempt, the last error,\n"
             "the drain's pause and the quarantined items.\n",
    .options = status_options,
};

int status_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    StatusArgs a = {0};
    int k = cli_parse(&status_command, argc, argv, &a, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    bool json = a.json;
    Token *tok = NULL;
    Spool *s = NULL;
    int ec = cli_open_spool(verb, cfg, &(CliSpool){0}, &tok, &s);
    if (ec != 0)
        return ec;
    SpoolStats st;
    SpoolUsage use;
    SpoolItemInfo *q = NULL;
    size_t nq = 0;
    int r = spool_stats(s, &st);
    if (r >= 0)
        r = spool_usage(s, &use);
    if (r >= 0 && st.quarantined > 0)
        r = spool_list(s, "quarantined", NULL, 0, 10, &q, &nq);
    spool_close(s);
    if (r < 0)
        return cli_fail(verb, r);
    int64_t now = lv_now_ms();
    if (want_json(cfg, json)) {
        _cleanup_cjson_ cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "spool", cfg->spool_db);
        cJSON *counts = cJSON_AddObjectToObject(o, "counts");
        cJSON_AddNumberToObject(counts, "queued", (double)st.queued);
        cJSON_AddNumberToObject(counts, "relaying", (double)st.relaying);
        cJSON_AddNumberToObject(counts, "receipted", (double)st.receipted);
        cJSON_AddNumberToObject(counts, "dead_letter", (double)st.dead_letter);
        cJSON_AddNumberToObject(counts, "quarantined", (double)st.quarantined);
        cJSON_AddNumberToObject(o, "conflicts", (double)st.conflicts);
        print_time_member(o, "oldest_queued_at", st.oldest_queued_ms);
        if (st.oldest_queued_ms > 0)
            cJSON_AddNumberToObject(o, "oldest_queued_age_s",
                                    (double)((now - st.oldest_queued_ms) / 1000));
        else
            cJSON_AddNullToObject(o, "oldest_queued_age_s");
        print_time_member(o, "next_attempt_at", st.next_due_ms);
        if (st.last_error[0])
            cJSON_AddStringToObject(o, "last_error", st.last_error);
        else
            cJSON_AddNullToObject(o, "last_error");
        print_time_member(o, "paused_until", st.paused_until_ms);
        if (st.paused_until_ms > 0)
            cJSON_AddStringToObject(o, "pause_reason", st.pause_reason);
        else
            cJSON_AddNullToObject(o, "pause_reason");
        cJSON *quota = cJSON_AddObjectToObject(o, "quota");
        cJSON_AddNumberToObject(quota, "items", (double)use.items);
        cJSON_AddNumberToObject(quota, "bytes", (double)use.bytes);
        if (use.quota_items)
            cJSON_AddNumberToObject(quota, "max_items", (double)use.quota_items);
        else
            cJSON_AddNullToObject(quota, "max_items");
        if (use.quota_bytes)
            cJSON_AddNumberToObject(quota, "max_bytes", (double)use.quota_bytes);
        else
            cJSON_AddNullToObject(quota, "max_bytes");
        cJSON *qa = cJSON_AddArrayToObject(o, "quarantined_items");
        for (size_t i = 0; i < nq; i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "event_id", q[i].event_id);
            cJSON_AddStringToObject(e, "reason", q[i].last_error ? q[i].last_error : "");
            cJSON_AddItemToArray(qa, e);
        }
        cli_print_json(o);
    } else {
        printf("spool:        %s\n", cfg->spool_db);
        printf("queued:       %lld\n", (long long)st.queued);
        printf("relaying:     %lld\n", (long long)st.relaying);
        printf("receipted:    %lld\n", (long long)st.receipted);
        printf("dead_letter:  %lld\n", (long long)st.dead_letter);
        printf("quarantined:  %lld\n", (long long)st.quarantined);
        printf("conflicts:    %lld\n", (long long)st.conflicts);
        char mi[24] = "unlimited", mb[24] = "unlimited";
        if (use.quota_items)
            snprintf(mi, sizeof(mi), "%lld", (long long)use.quota_items);
        if (use.quota_bytes)
            snprintf(mb, sizeof(mb), "%lld", (long long)use.quota_bytes);
        printf("quota:        %lld of %s items, %lld of %s bytes (not yet delivered)\n",
               (long long)use.items, mi, (long long)use.bytes, mb);
        if (st.oldest_queued_ms > 0) {
            char t[32];
            lv_format_time(st.oldest_queued_ms, t);
            printf("oldest queued: %s (%lld s ago)\n", t,
                   (long long)((now - st.oldest_queued_ms) / 1000));
        }
        if (st.next_due_ms > 0) {
            char t[32];
            lv_format_time(st.next_due_ms, t);
            printf("next attempt: %s\n", t);
        }
        printf("last error:   %s\n", st.last_error[0] ? st.last_error : "-");
        if (st.paused_until_ms > 0) {
            char t[32];
            lv_format_time(st.paused_until_ms, t);
            printf("drain paused: until %s (%s)\n", t, st.pause_reason);
        }
        for (size_t i = 0; i < nq; i++)
            printf("quarantined:  %s: %s\n", q[i].event_id, q[i].last_error ? q[i].last_error : "");
    }
    spool_item_infos_free(q, nq);
    return LV_EXIT_OK;
}

/* ---------- list, dead-letter list ---------- */

static cJSON *info_json(const SpoolItemInfo *it)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "seq", (double)it->id);
    cJSON_AddStringToObject(o, "event_id", it->event_id);
    cJSON_AddStringToObject(o, "stream_id", it->stream_id);
    cJSON_AddStringToObject(o, "source_ref", it->source_ref);
    cJSON_AddStringToObject(o, "event_type", it->event_type);
    cJSON_AddStringToObject(o, "state", it->state);
    cJSON_AddNumberToObject(o, "attempts", it->attempts);
    print_time_member(o, "enqueued_at", it->enqueued_ms);
    print_time_member(o, "next_attempt_at",
                      strcmp(it->state, "queued") == 0 ? it->next_attempt_ms : 0);
    print_time_member(o, "last_attempt_at", it->last_attempt_ms);
    print_time_member(o, "receipted_at", it->receipted_ms);
    if (it->last_error)
        cJSON_AddStringToObject(o, "last_error", it->last_error);
    else
        cJSON_AddNullToObject(o, "last_error");
    cJSON_AddStringToObject(o, "envelope_hash", it->envelope_hash);
    return o;
}

static int list_items(const char *verb, const Config *cfg, const char *state, const char *stream_id,
                      int64_t after, size_t limit, bool json)
{
    if (state && !spool_valid_state(state))
        return cli_usage_error(verb, "--state: %s: must be one of " SPOOL_STATE_NAMES, state);
    if (stream_id && !lv_valid_id(stream_id))
        return cli_usage_error(verb, "--stream-id: must be 1-128 bytes of [A-Za-z0-9._:@/-]");
    Token *tok = NULL;
    Spool *s = NULL;
    int ec = cli_open_spool(verb, cfg, &(CliSpool){0}, &tok, &s);
    if (ec != 0)
        return ec;
    SpoolItemInfo *items = NULL;
    size_t n = 0;
    int r = spool_list(s, state, stream_id, after, limit, &items, &n);
    spool_close(s);
    if (r < 0)
        return cli_fail(verb, r);
    bool as_json = want_json(cfg, json);
    if (!as_json && n > 0)
        printf("%-8s %-12s %-4s %-20s %s\n", "SEQ", "STATE", "TRY", "ENQUEUED", "EVENT_ID");
    for (size_t i = 0; i < n; i++) {
        if (as_json) {
            _cleanup_cjson_ cJSON *o = info_json(&items[i]);
            cli_print_json(o);
        } else {
            char t[32];
            lv_format_time(items[i].enqueued_ms, t);
            printf("%-8lld %-12s %-4d %-20s %s%s%s\n", (long long)items[i].id, items[i].state,
                   items[i].attempts, t, items[i].event_id, items[i].last_error ? "  " : "",
                   items[i].last_error ? items[i].last_error : "");
        }
    }
    if (!as_json && n == limit)
        printf("(more may follow: --after %lld)\n", (long long)items[n - 1].id);
    spool_item_infos_free(items, n);
    return LV_EXIT_OK;
}

/* The options list and dead-letter list share. */
typedef struct ListArgs {
    const char *state, *stream_id;
    int64_t limit, after;
    bool json;
    bool all; /* dead-letter requeue */
} ListArgs;

#define LIST_OPTIONS                                                                               \
    CLI_STRING_OPT("stream-id", "ID", ListArgs, stream_id, "only this stream"),                    \
        CLI_NUMBER_OPT("limit", "N", ListArgs, limit, 1, LIST_MAX, "at most N items (100)"),       \
        CLI_NUMBER_OPT("after", "SEQ", ListArgs, after, 0, INT64_MAX,                              \
                       "items after this sequence number (paging)"),                               \
        CLI_FLAG_OPT("json", ListArgs, json, "JSON even on a terminal")

static const CliOption list_options[] = {
    CLI_STRING_OPT("state", "S", ListArgs, state, "only items in state S (" SPOOL_STATE_NAMES ")"),
    LIST_OPTIONS,
    {0},
};

static const CliCommand list_command = {
    .name = "list",
    .about = "Items in enqueue order.\n",
    .options = list_options,
};

int list_main(const Config *cfg, int argc, char **argv)
{
    ListArgs a = {.limit = LIST_DEFAULT};
    int k = cli_parse(&list_command, argc, argv, &a, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    return list_items(argv[0], cfg, a.state, a.stream_id, a.after, (size_t)a.limit, a.json);
}

/* ---------- show ---------- */

typedef struct ShowArgs {
    bool json, payload;
} ShowArgs;

static const CliOption show_options[] = {
    CLI_FLAG_OPT("json", ShowArgs, json, "JSON on one line even on a terminal"),
    CLI_FLAG_OPT("payload", ShowArgs, payload, "decrypt the payload on the token and show it"),
    {0},
};

static const CliCommand show_command = {
    .name = "show",
    .about = "One item with its envelope and receipt.\n",
    .operands = "EVENT_ID",
    .min_operands = 1,
    .max_operands = 1,
    .options = show_options,
};

int show_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    ShowArgs a = {0};
    const char *event_id = NULL;
    int k = cli_parse(&show_command, argc, argv, &a, &event_id, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    bool json = a.json, want_payload = a.payload;
    if (strlen(event_id) >= ENVELOPE_EVENT_ID_MAX)
        return cli_usage_error(verb, "EVENT_ID: longer than %d bytes", ENVELOPE_EVENT_ID_MAX - 1);

    Token *tok = NULL;
    Spool *s = NULL;
    int ec = cli_open_spool(verb, cfg, &(CliSpool){.token = want_payload}, &tok, &s);
    if (ec != 0)
        return ec;
    SpoolItemInfo it;
    int r = spool_get(s, event_id, &it);
    if (r >= 0 && it.envelope_sealed && !it.envelope && !tok) {
        /* The envelope carries the opt-in payload and is sealed: it takes
         * the token to show it. */
        spool_item_info_done(&it);
        spool_close(s);
        ec = cli_open_spool(verb, cfg, &(CliSpool){.token = true}, &tok, &s);
        if (ec != 0)
            return ec;
        r = spool_get(s, event_id, &it);
    }
    char *payload = NULL;
    size_t payload_len = 0;
    if (r >= 0 && want_payload) {
        r = spool_payload(s, event_id, &payload, &payload_len);
        if (r < 0)
            spool_item_info_done(&it);
    }
    spool_close(s);
    token_close(tok);
    if (r < 0)
        return cli_fail(verb, r);

    cJSON *o = info_json(&it);
    cJSON_AddStringToObject(o, "payload_hash", it.payload_hash);
    if (strcmp(it.state, "relaying") == 0) {
        cJSON *lease = cJSON_AddObjectToObject(o, "lease");
        cJSON_AddStringToObject(lease, "owner", it.lease_owner);
        print_time_member(lease, "expires_at", it.lease_expires_ms);
    } else {
        cJSON_AddNullToObject(o, "lease");
    }
    cJSON_AddNumberToObject(o, "conflicts", (double)it.conflicts);
    cJSON_AddBoolToObject(o, "envelope_sealed", it.envelope_sealed);
    cJSON *env = it.envelope ? cJSON_ParseWithLength(it.envelope, it.envelope_len) : NULL;
    cJSON_AddItemToObject(o, "envelope", env ? env : cJSON_CreateNull());
    cJSON *rc = it.receipt ? cJSON_Parse(it.receipt) : NULL;
    cJSON_AddItemToObject(o, "receipt", rc ? rc : cJSON_CreateNull());
    if (want_payload) {
        cJSON *p = cJSON_ParseWithLength(payload, payload_len);
        cJSON_AddItemToObject(o, "payload", p ? p : cJSON_CreateNull());
    }
    char *text = want_json(cfg, json) ? cJSON_PrintUnformatted(o) : cJSON_Print(o);
    if (text) {
        puts(text);
        erase_and_free(text, strlen(text));
    }
    /* The tree may hold plaintext (the payload, an opt-in envelope). */
    envelope_json_erase(o);
    erase_and_free(payload, payload_len);
    spool_item_info_done(&it);
    return LV_EXIT_OK;
}

/* ---------- dead-letter, purge ---------- */

static const CliOption dead_letter_list_options[] = {LIST_OPTIONS, {0}};

static const CliCommand dead_letter_list_command = {
    .name = "dead-letter list",
    .about = "Items that ran out of attempts or were refused for good.\n",
    .options = dead_letter_list_options,
};

static const CliOption dead_letter_requeue_options[] = {
    CLI_FLAG_OPT("all", ListArgs, all, "every dead-lettered item"),
    {0},
};

static const CliCommand dead_letter_requeue_command = {
    .name = "dead-letter requeue",
    .synopsis = "(EVENT_ID|--all)",
    .about = "Back to queued with the attempts reset.\n",
    .operands = "EVENT_ID",
    .max_operands = 1,
    .options = dead_letter_requeue_options,
};

static int requeue(const Config *cfg, const char *target, bool all)
{
    const char *verb = "dead-letter";
    if (all == (target != NULL))
        return cli_usage_error(verb, "usage: dead-letter requeue (EVENT_ID|--all)");
    if (target && strlen(target) >= ENVELOPE_EVENT_ID_MAX)
        return cli_usage_error(verb, "requeue: %s: expected an event id or --all", target);
    Token *tok = NULL;
    Spool *s = NULL;
    int ec = cli_open_spool(verb, cfg, &(CliSpool){0}, &tok, &s);
    if (ec != 0)
        return ec;
    size_t n = 0;
    int r = spool_requeue(s, target, &n);
    spool_close(s);
    if (r < 0)
        return cli_fail(verb, r);
    if (cli_human(cfg))
        printf("requeued %zu item(s)\n", n);
    else
        printf("{\"requeued\":%zu}\n", n);
    return LV_EXIT_OK;
}

int dead_letter_main(const Config *cfg, int argc, char **argv)
{
    static const CliCommand *const subs[] = {&dead_letter_list_command,
                                             &dead_letter_requeue_command};
    ListArgs a = {.limit = LIST_DEFAULT};
    const char *target = NULL;
    int i = 0;
    int k = cli_parse_subcommand("dead-letter", argc, argv, subs, ELEMENTSOF(subs), &i, &a, &target,
                                 NULL);
    if (k != 0)
        return cli_parse_exit(k);
    if (subs[i] == &dead_letter_requeue_command)
        return requeue(cfg, target, a.all);
    return list_items("dead-letter", cfg, "dead_letter", a.stream_id, a.after, (size_t)a.limit,
                      a.json);
}

/* ---------- retry-now ---------- */

typedef struct RetryNowArgs {
    const char *stream_id;
    bool all;
} RetryNowArgs;

static const CliOption retry_now_options[] = {
    CLI_FLAG_OPT("all", RetryNowArgs, all, "items waiting in every stream"),
    CLI_STRING_OPT("stream-id", "ID", RetryNowArgs, stream_id, "only the items of this stream"),
    {0},
};

static const CliCommand retry_now_command = {
    .name = "retry-now",
    .synopsis = "(--all|--stream-id ID)",
    .about = "Queued items waiting for a retry (backoff, Retry-After) become due now; their\n"
             "attempts are kept. A running drain-loop relays them at once, in stream order.\n",
    .options = retry_now_options,
};

int retry_now_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    RetryNowArgs a = {0};
    int k = cli_parse(&retry_now_command, argc, argv, &a, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    /* Every waiting item is a deliberate choice: no default. */
    if (a.all == (a.stream_id != NULL))
        return cli_usage_error(verb, "give --all or --stream-id ID (one of them)");
    if (a.stream_id && !lv_valid_id(a.stream_id))
        return cli_usage_error(verb, "--stream-id: %s: must be 1-128 bytes of [A-Za-z0-9._:@/-]",
                               a.stream_id);
    Token *tok = NULL;
    Spool *s = NULL;
    int ec = cli_open_spool(verb, cfg, &(CliSpool){0}, &tok, &s);
    if (ec != 0)
        return ec;
    size_t n = 0;
    int r = spool_retry_now(s, a.stream_id, &n);
    spool_close(s);
    if (r < 0)
        return cli_fail(verb, r);
    if (cli_human(cfg))
        printf("%zu item(s) due now\n", n);
    else
        printf("{\"due_now\":%zu}\n", n);
    return LV_EXIT_OK;
}

typedef struct PurgeArgs {
    const char *before;
} PurgeArgs;

static const CliOption purge_options[] = {
    CLI_REQUIRED_OPT("receipted-before", "YYYY-MM-DD|YYYY-MM-DDTHH:MM:SSZ", PurgeArgs, before,
                     "delete receipted items whose receipt is older"),
    {0},
};

static const CliCommand purge_command = {
    .name = "purge",
    .options = purge_options,
};

int purge_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    PurgeArgs a = {0};
    int k = cli_parse(&purge_command, argc, argv, &a, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    const char *before = a.before;
    int64_t ms;
    if (lv_parse_time(before, &ms) < 0)
        return cli_usage_error(verb,
                               "--receipted-before: %s: must be YYYY-MM-DD or "
                               "YYYY-MM-DDTHH:MM:SSZ",
                               before);
    Token *tok = NULL;
    Spool *s = NULL;
    int ec = cli_open_spool(verb, cfg, &(CliSpool){0}, &tok, &s);
    if (ec != 0)
        return ec;
    size_t n = 0;
    int r = spool_purge(s, ms, &n);
    spool_close(s);
    if (r < 0)
        return cli_fail(verb, r);
    if (cli_human(cfg))
        printf("purged %zu receipted item(s)\n", n);
    else
        printf("{\"purged\":%zu}\n", n);
    return LV_EXIT_OK;
}
