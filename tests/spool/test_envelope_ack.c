/* SPDX-License-Identifier: Apache-2.0 */
/* The fail-closed acknowledgement check of DESIGN §5.4: one test per reason,
 * and the one shape that counts as delivered. */
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "lv.h"
#include "lvtest.h"

#define HASH "a3f1c0de5b7e9d2468ace13579bdf02468ace13579bdf02468ace13579bdf024"
#define SID  "str_1"
#define EID  "local-vault:inst:ref"

#define ACK(h, s, e)                                                                               \
    "\"localVaultAck\":{\"envelopeHash\":\"" h "\",\"eventId\":\"" e "\",\"streamId\":\"" s "\"}"
#define RECEIPT(e, s)                                                                              \
    "\"receipt\":{\"event_id\":\"" e "\",\"stream_id\":\"" s "\",\"seq_no\":42,"                   \
    "\"receipt\":{\"alg\":\"Ed25519\",\"kid\":\"k\",\"signature\":\"00\"}}"
#define GOOD "{" ACK(HASH, SID, EID) "," RECEIPT(EID, SID) "}"

static const char *check(long status, const char *body)
{
    AckCheck a;
    envelope_check_ack(status, body, body ? strlen(body) : 0, HASH, SID, EID, &a);
    const char *reason = a.reason;
    if (reason)
        assert_null(a.receipt_json);
    ack_check_done(&a);
    return reason;
}

static void good_ack_is_delivered_and_keeps_the_receipt(void **state)
{
    AckCheck a;
    envelope_check_ack(200, GOOD, strlen(GOOD), HASH, SID, EID, &a);
    assert_null(a.reason);
    assert_non_null(a.receipt_json);
    assert_string_equal(a.receipt_json,
                        "{\"event_id\":\"" EID "\",\"receipt\":{\"alg\":\"Ed25519\",\"kid\":\"k\","
                        "\"signature\":\"00\"},\"seq_no\":42,\"stream_id\":\"" SID "\"}");
    ack_check_done(&a);
    /* Any 2xx, and white space around the object, are fine. */
    assert_null(check(201, "  " GOOD "\r\n"));
}

static void non_2xx_status_is_refused(void **state)
{
    assert_string_equal(check(199, GOOD), "ack_http_status");
    assert_string_equal(check(300, GOOD), "ack_http_status");
    assert_string_equal(check(500, GOOD), "ack_http_status");
}

static void html_from_a_proxy_is_not_json(void **state)
{
    assert_string_equal(check(200, "<html><body>OK</body></html>"), "ack_not_json");
    assert_string_equal(check(200, ""), "ack_not_json");
    assert_string_equal(check(200, NULL), "ack_not_json");
}

static void truncated_or_trailing_garbage_is_not_json(void **state)
{
    char body[sizeof(GOOD)];
    memcpy(body, GOOD, sizeof(GOOD));
    body[sizeof(GOOD) - 5] = '\0';
    assert_string_equal(check(200, body), "ack_not_json");
    assert_string_equal(check(200, GOOD "x"), "ack_not_json");
    assert_string_equal(check(200, GOOD GOOD), "ack_not_json");
}

static void embedded_nul_is_not_json(void **state)
{
    AckCheck a;
    static const char body[] = GOOD "\0{}";
    envelope_check_ack(200, body, sizeof(body) - 1, HASH, SID, EID, &a);
    assert_string_equal(a.reason, "ack_not_json");
    ack_check_done(&a);
    /* "str_1\u0000x" would decode to a C string equal to "str_1". */
    assert_string_equal(check(200, "{" ACK(HASH, SID "\\u0000x", EID) "," RECEIPT(EID, SID) "}"),
                        "ack_not_json");
    /* An escaped backslash followed by u0000 is an ordinary string. */
    assert_string_equal(check(200, "{" ACK(HASH, SID "\\\\u0000", EID) "," RECEIPT(EID, SID) "}"),
                        "ack_stream_id_mismatch");
}

static void over_64_kib_is_too_large(void **state)
{
    size_t n = ENVELOPE_MAX_ACK + 1;
    char *body = malloc(n + 1);
    memset(body, ' ', n);
    memcpy(body, GOOD, strlen(GOOD));
    body[n] = '\0';
    assert_string_equal(check(200, body), "ack_too_large");
    free(body);
}

static void array_is_not_an_object(void **state)
{
    assert_string_equal(check(200, "[" GOOD "]"), "ack_not_object");
    assert_string_equal(check(200, "\"ok\""), "ack_not_object");
}

static void missing_local_vault_ack(void **state)
{
    assert_string_equal(check(200, "{" RECEIPT(EID, SID) "}"), "ack_missing");
    assert_string_equal(check(200, "{\"localVaultAck\":\"yes\"," RECEIPT(EID, SID) "}"),
                        "ack_missing");
    assert_string_equal(check(200, "{}"), "ack_missing");
}

static void duplicate_members_are_refused(void **state)
{
    assert_string_equal(
        check(200, "{" ACK(HASH, SID, EID) "," ACK(HASH, SID, EID) "," RECEIPT(EID, SID) "}"),
        "ack_duplicate_member");
    assert_string_equal(check(200, "{\"localVaultAck\":{\"envelopeHash\":\"" HASH
                                   "\",\"envelopeHash\":\"" HASH "\",\"eventId\":\"" EID
                                   "\",\"streamId\":\"" SID "\"}," RECEIPT(EID, SID) "}"),
                        "ack_duplicate_member");
    assert_string_equal(check(200, "{" ACK(HASH, SID, EID) ",\"receipt\":{\"event_id\":\"" EID
                                                           "\",\"stream_id\":\"" SID
                                                           "\",\"stream_id\":\"" SID "\"}}"),
                        "ack_duplicate_member");
}

static void wrong_or_missing_envelope_hash(void **state)
{
    assert_string_equal(check(200, "{" ACK("b3f1c0de5b7e9d2468ace13579bdf02468ace13579bdf02468ace1"
                                           "3579bdf024",
                                           SID, EID) "," RECEIPT(EID, SID) "}"),
                        "ack_envelope_hash_mismatch");
    assert_string_equal(check(200, "{\"localVaultAck\":{\"eventId\":\"" EID "\",\"streamId\":\"" SID
                                   "\"}," RECEIPT(EID, SID) "}"),
                        "ack_envelope_hash_mismatch");
    assert_string_equal(check(200, "{\"localVaultAck\":{\"envelopeHash\":7,\"eventId\":\"" EID
                                   "\",\"streamId\":\"" SID "\"}," RECEIPT(EID, SID) "}"),
                        "ack_envelope_hash_mismatch");
}

static void wrong_stream_id_in_ack(void **state)
{
    assert_string_equal(check(200, "{" ACK(HASH, "str_2", EID) "," RECEIPT(EID, SID) "}"),
                        "ack_stream_id_mismatch");
}

static void wrong_event_id_in_ack(void **state)
{
    assert_string_equal(
        check(200, "{" ACK(HASH, SID, "local-vault:inst:other") "," RECEIPT(EID, SID) "}"),
        "ack_event_id_mismatch");
}

static void missing_receipt(void **state)
{
    assert_string_equal(check(200, "{" ACK(HASH, SID, EID) "}"), "ack_receipt_missing");
    assert_string_equal(check(200, "{" ACK(HASH, SID, EID) ",\"receipt\":[]}"),
                        "ack_receipt_missing");
}

static void receipt_for_another_item(void **state)
{
    assert_string_equal(check(200, "{" ACK(HASH, SID, EID) "," RECEIPT(EID, "str_2") "}"),
                        "ack_receipt_mismatch");
    assert_string_equal(
        check(200, "{" ACK(HASH, SID, EID) "," RECEIPT("local-vault:inst:x", SID) "}"),
        "ack_receipt_mismatch");
    assert_string_equal(
        check(200, "{" ACK(HASH, SID, EID) ",\"receipt\":{\"stream_id\":\"" SID "\"}}"),
        "ack_receipt_mismatch");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(good_ack_is_delivered_and_keeps_the_receipt),
        cmocka_unit_test(non_2xx_status_is_refused),
        cmocka_unit_test(html_from_a_proxy_is_not_json),
        cmocka_unit_test(truncated_or_trailing_garbage_is_not_json),
        cmocka_unit_test(embedded_nul_is_not_json),
        cmocka_unit_test(over_64_kib_is_too_large),
        cmocka_unit_test(array_is_not_an_object),
        cmocka_unit_test(missing_local_vault_ack),
        cmocka_unit_test(duplicate_members_are_refused),
        cmocka_unit_test(wrong_or_missing_envelope_hash),
        cmocka_unit_test(wrong_stream_id_in_ack),
        cmocka_unit_test(wrong_event_id_in_ack),
        cmocka_unit_test(missing_receipt),
        cmocka_unit_test(receipt_for_another_item),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
