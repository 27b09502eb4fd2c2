/* SPDX-License-Identifier: Apache-2.0 */
/* Regression tests for defects the reliability work found in shared code
 * (see docs/reliability.md, "Defects found"). */
#include <stdlib.h>
#include <string.h>

#include "lv.h"
#include "lvtest.h"

/* lv_error_set formatted straight into the buffer that lv_error() returns;
 * wrapping the current detail ("payload: %s", lv_error()) overlapped source
 * and destination and garbled the message ("payload: payload: ent/x"). */
static void error_detail_can_wrap_itself(void **state)
{
    lv_error_set(LV_ERR_INPUT, "/nonexistent/payload.json: No such file or directory");
    assert_int_equal(lv_error_set(LV_ERR_INPUT, "payload: %s", lv_error()), LV_ERR_INPUT);
    assert_string_equal(lv_error(),
                        "payload: /nonexistent/payload.json: No such file or directory");
    lv_error_set(LV_ERR_INPUT, "%s", lv_error());
    assert_string_equal(lv_error(),
                        "payload: /nonexistent/payload.json: No such file or directory");
    /* Twice nested, and cut at the buffer's size, still one line. */
    char big[2000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    lv_error_set(LV_ERR_INPUT, "%s", big);
    lv_error_set(LV_ERR_INPUT, "a: %s", lv_error());
    lv_error_set(LV_ERR_INPUT, "b: %s", lv_error());
    assert_int_equal(strncmp(lv_error(), "b: a: xxxx", 10), 0);
    assert_true(strlen(lv_error()) < 1024);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(error_detail_can_wrap_itself),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
