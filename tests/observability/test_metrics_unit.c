/* SPDX-License-Identifier: Apache-2.0 */
/* metrics.c without a drain: histogram placement, reason labels kept to
 * their character set and bounded in number, the atomic file write. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lv.h"
#include "metrics.h"

static char *format(Metrics *m, const SpoolStats *st)
{
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(metrics_format(m, st, 10000, &text, &len), 0);
    assert_int_equal(strlen(text), len);
    return text;
}

static void latency_lands_in_the_first_bucket_that_holds_it(void **state)
{
    Metrics *m = NULL;
    assert_int_equal(metrics_new(&m), 0);
    metrics_attempt(m, 5);     /* 0.005 s: on the bound, counts in le="0.005" */
    metrics_attempt(m, 6);     /* 0.006 s: le="0.01" */
    metrics_attempt(m, 90000); /* 90 s: only +Inf */
    char *t = format(m, NULL);
    assert_non_null(strstr(t, "attesto_relay_attempt_duration_seconds_bucket{le=\"0.005\"} 1\n"));
    assert_non_null(strstr(t, "attesto_relay_attempt_duration_seconds_bucket{le=\"0.01\"} 2\n"));
    assert_non_null(strstr(t, "attesto_relay_attempt_duration_seconds_bucket{le=\"60\"} 2\n"));
    assert_non_null(strstr(t, "attesto_relay_attempt_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(t, "attesto_relay_attempt_duration_seconds_count 3\n"));
    assert_non_null(strstr(t, "attesto_relay_attempt_duration_seconds_sum 90.011000\n"));
    /* no spool figures without stats */
    assert_null(strstr(t, "attesto_relay_items"));
    free(t);
    metrics_free(m);
}

static void reasons_are_sanitized_and_bounded(void **state)
{
    Metrics *m = NULL;
    assert_int_equal(metrics_new(&m), 0);
    metrics_failure(m, "http_503");
    metrics_failure(m, "http_503");
    metrics_failure(m, "evil\"} 1\nfake_metric{x=\"");
    for (int i = 0; i < METRICS_MAX_REASONS + 5; i++) {
        char r[32];
        snprintf(r, sizeof(r), "r%d", i);
        metrics_failure(m, r);
    }
    metrics_dead_lettered(m, "receiver_conflict");
    char *t = format(m, NULL);
    assert_non_null(strstr(t, "attesto_relay_attempt_failures_total{reason=\"http_503\"} 2\n"));
    assert_null(strstr(t, "\nfake_metric"));
    assert_null(strstr(t, "evil\""));
    assert_non_null(strstr(t, "{reason=\"evil___1_fake_metric_x__\"} 1\n"));
    /* 48 distinct reasons kept; the rest counted together */
    assert_non_null(strstr(t, "attesto_relay_attempt_failures_total{reason=\"other\"} 7\n"));
    assert_non_null(strstr(t, "attesto_relay_dead_lettered_total{reason=\"other\"} 1\n"));
    free(t);
    metrics_free(m);
}

static void spool_figures_and_the_file(void **state)
{
    Metrics *m = NULL;
    assert_int_equal(metrics_new(&m), 0);
    SpoolStats st = {.queued = 3, .dead_letter = 1, .oldest_queued_ms = 4000};
    metrics_delivered(m);
    metrics_token_error(m);
    metrics_set_paused(m, true);
    char *t = format(m, &st);
    assert_non_null(strstr(t, "attesto_relay_items{state=\"queued\"} 3\n"));
    assert_non_null(strstr(t, "attesto_relay_items{state=\"dead_letter\"} 1\n"));
    assert_non_null(strstr(t, "attesto_relay_oldest_queued_age_seconds 6.000\n"));
    assert_non_null(strstr(t, "attesto_relay_deliveries_total 1\n"));
    assert_non_null(strstr(t, "attesto_relay_token_errors_total 1\n"));
    assert_non_null(strstr(t, "attesto_relay_paused 1\n"));

    char dir[] = "/tmp/lv-metrics-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/m.prom", dir);
    mode_t old = umask(0077);
    assert_int_equal(metrics_write_file(path, t, strlen(t)), 0);
    umask(old);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0644);
    char *back = NULL;
    size_t n = 0;
    assert_int_equal(lv_read_file(path, 1 << 20, &back, &n), 0);
    assert_string_equal(back, t);
    free(back);
    /* a directory that does not exist: an error naming the path, no file */
    char bad[160];
    snprintf(bad, sizeof(bad), "%s/none/m.prom", dir);
    lv_error_clear();
    assert_true(metrics_write_file(bad, t, strlen(t)) < 0);
    assert_non_null(strstr(lv_error(), "none"));
    unlink(path);
    rmdir(dir);
    free(t);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(latency_lands_in_the_first_bucket_that_holds_it),
        cmocka_unit_test(reasons_are_sanitized_and_bounded),
        cmocka_unit_test(spool_figures_and_the_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
