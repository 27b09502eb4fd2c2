/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests of the relay's parsers and policies: Retry-After, libcurl
 * failure reasons, the option checks of relay_new and the drain backoff. */
#include "lvtest.h"

#include <curl/curl.h>

#include "drain.h"
#include "lv.h"
#include "relay.h"

static const int64_t NOW = 1767225600000LL; /* 2026-01-01T00:00:00Z */

static void test_retry_after_seconds(void **state)
{
    int64_t ms = -1;
    assert_int_equal(relay_parse_retry_after("2", NOW, &ms), 0);
    assert_int_equal(ms, 2000);
    assert_int_equal(relay_parse_retry_after("  120 \r\n", NOW, &ms), 0);
    assert_int_equal(ms, 120000);
    assert_int_equal(relay_parse_retry_after("0", NOW, &ms), 0);
    assert_int_equal(ms, 0);
}

static void test_retry_after_is_capped(void **state)
{
    int64_t ms = -1;
    assert_int_equal(relay_parse_retry_after("86400", NOW, &ms), 0);
    assert_int_equal(ms, (int64_t)RELAY_RETRY_AFTER_CAP_S * 1000);
    assert_int_equal(relay_parse_retry_after("99999999999999999999", NOW, &ms), 0);
    assert_int_equal(ms, (int64_t)RELAY_RETRY_AFTER_CAP_S * 1000);
}

static void test_retry_after_http_date_forms(void **state)
{
    int64_t ms = -1;
    /* IMF-fixdate, RFC 850 and asctime: all three forms RFC 9110 accepts. */
    assert_int_equal(relay_parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", NOW, &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(relay_parse_retry_after("Thursday, 01-Jan-26 00:01:00 GMT", NOW, &ms), 0);
    assert_int_equal(ms, 60000);
    assert_int_equal(relay_parse_retry_after("Thu Jan  1 00:00:05 2026", NOW, &ms), 0);
    assert_int_equal(ms, 5000);
}

static void test_retry_after_past_date_is_zero(void **state)
{
    int64_t ms = -1;
    assert_int_equal(relay_parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", NOW, &ms), 0);
    assert_int_equal(ms, 0);
}

static void test_retry_after_garbage_is_refused(void **state)
{
    int64_t ms = 77;
    assert_int_equal(relay_parse_retry_after("", NOW, &ms), LV_ERR_INPUT);
    assert_int_equal(relay_parse_retry_after("soon", NOW, &ms), LV_ERR_INPUT);
    assert_int_equal(relay_parse_retry_after("-5", NOW, &ms), LV_ERR_INPUT);
    assert_int_equal(relay_parse_retry_after("1.5", NOW, &ms), LV_ERR_INPUT);
    assert_int_equal(ms, 77); /* untouched on error */
}

static void test_curl_reasons(void **state)
{
    assert_null(relay_reason_for_curl(CURLE_OK));
    assert_string_equal(relay_reason_for_curl(CURLE_PEER_FAILED_VERIFICATION), "tls_verify_failed");
    assert_string_equal(relay_reason_for_curl(CURLE_SSL_CACERT_BADFILE), "tls_verify_failed");
    assert_string_equal(relay_reason_for_curl(CURLE_SSL_PINNEDPUBKEYNOTMATCH), "tls_pin_mismatch");
    assert_string_equal(relay_reason_for_curl(CURLE_SSL_CONNECT_ERROR), "tls_handshake_failed");
    assert_string_equal(relay_reason_for_curl(CURLE_COULDNT_CONNECT), "connect_failed");
    assert_string_equal(relay_reason_for_curl(CURLE_COULDNT_RESOLVE_HOST), "dns_failed");
    assert_string_equal(relay_reason_for_curl(CURLE_OPERATION_TIMEDOUT), "timeout");
    assert_string_equal(relay_reason_for_curl(CURLE_GOT_NOTHING), "connection_dropped");
    assert_string_equal(relay_reason_for_curl(CURLE_PARTIAL_FILE), "response_truncated");
    assert_string_equal(relay_reason_for_curl(CURLE_UNSUPPORTED_PROTOCOL), "protocol_refused");
    assert_string_equal(relay_reason_for_curl(CURLE_FTP_WEIRD_PASV_REPLY), "transport_error");
}

static void test_relay_refuses_plain_http(void **state)
{
    Relay *r = NULL;
    RelayOptions o = {.url = "http://127.0.0.1:1/v2/local-vault/installations/i/events"};
    lv_error_clear();
    assert_int_equal(relay_new(&o, &r), LV_ERR_INPUT);
    assert_null(r);
    assert_non_null(strstr(lv_error(), "--relay-url"));
    assert_non_null(strstr(lv_error(), "https"));
    o.url = "https://";
    assert_int_equal(relay_new(&o, &r), LV_ERR_INPUT);
}

static void test_relay_refuses_unreadable_ca_file(void **state)
{
    Relay *r = NULL;
    RelayOptions o = {.url = "https://127.0.0.1:1/x", .ca_file = "/nonexistent/ca.pem"};
    lv_error_clear();
    assert_int_equal(relay_new(&o, &r), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "--ca-file"));
}

typedef struct Got {
    int n;
    uint64_t tag;
    char reason[64];
} Got;

static void record(void *ud, const RelayResult *res)
{
    Got *got = ud;
    got->n++;
    got->tag = res->tag;
    snprintf(got->reason, sizeof(got->reason), "%s",
             res->transport_reason ? res->transport_reason : "");
}

static void test_relay_unreachable_is_connect_failed(void **state)
{
    /* A real transfer to a closed loopback port: the failure comes back
     * through the callback as a reason, not as an error of relay_run. */
    Relay *r = NULL;
    RelayOptions o = {.url = "https://127.0.0.1:1/v2/local-vault/installations/i/events",
                      .connect_timeout_ms = 2000,
                      .timeout_ms = 3000};
    assert_int_equal(relay_new(&o, &r), 0);
    static const char body[] = "{}";
    assert_int_equal(relay_submit(r, 42, "local-vault:i:r", body, 2), 0);
    assert_int_equal(relay_in_flight(r), 1);
    Got got = {0};
    int64_t deadline = lv_mono_ms() + 5000;
    while (got.n == 0 && lv_mono_ms() < deadline)
        assert_true(relay_run(r, 200, NULL, 0, record, &got) >= 0);
    assert_int_equal(got.n, 1);
    assert_int_equal(got.tag, 42);
    assert_string_equal(got.reason, "connect_failed");
    assert_int_equal(relay_in_flight(r), 0);
    relay_free(r);
}

static void test_backoff_bounds(void **state)
{
    /* Full jitter: within (0, base * 2^(n-1)], never 0, Retry-After a floor. */
    for (int i = 0; i < 200; i++) {
        int64_t d = drain_backoff_ms(1, 1000, 0);
        assert_true(d >= 1 && d <= 1000);
        d = drain_backoff_ms(4, 1000, 0);
        assert_true(d >= 1 && d <= 8000);
        d = drain_backoff_ms(30, 1000, 0);
        assert_true(d >= 1 && d <= 300000);
        d = drain_backoff_ms(3, 10, 0); /* scaled base for tests */
        assert_true(d >= 1 && d <= 40);
        d = drain_backoff_ms(1, 10, 2000);
        assert_int_equal(d, 2000);
    }
}

static void backoff_is_full_jitter_within_bounds(void **state)
{
    for (int a = 1; a <= 30; a++) {
        int64_t ceiling = 1000;
        for (int i = 1; i < a && ceiling < 300000; i++)
            ceiling *= 2;
        if (ceiling > 300000)
            ceiling = 300000;
        int64_t lo = ceiling, hi = 0;
        for (int k = 0; k < 200; k++) {
            int64_t d = drain_backoff_ms(a, 1000, 0);
            assert_true(d >= 0 && d <= ceiling);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
        }
        /* Jitter spreads over the range, not a fixed delay. */
        assert_true(hi - lo > ceiling / 4);
    }
    for (int k = 0; k < 100; k++) {
        assert_true(drain_backoff_ms(1, 1000, 5000) >= 5000);
        assert_true(drain_backoff_ms(1, 1000, 5000) <= 5000);
        assert_true(drain_backoff_ms(30, 1000, 86400000) <= 3600000);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_after_seconds),
        cmocka_unit_test(test_retry_after_is_capped),
        cmocka_unit_test(test_retry_after_http_date_forms),
        cmocka_unit_test(test_retry_after_past_date_is_zero),
        cmocka_unit_test(test_retry_after_garbage_is_refused),
        cmocka_unit_test(test_curl_reasons),
        cmocka_unit_test(test_relay_refuses_plain_http),
        cmocka_unit_test(test_relay_refuses_unreadable_ca_file),
        cmocka_unit_test(test_relay_unreachable_is_connect_failed),
        cmocka_unit_test(test_backoff_bounds),
        cmocka_unit_test(backoff_is_full_jitter_within_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
