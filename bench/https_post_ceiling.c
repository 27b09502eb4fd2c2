/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTPS POST ceiling: a plain libcurl multi client that posts given
 * bodies with keep-alive at a fixed concurrency, with the relay's headers and
 * TLS settings, and reports the rate. It checks only the status code. */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct Body {
    char *text, *event_id;
    size_t len;
} Body;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t discard(char *p, size_t s, size_t n, void *u)
{
    (void)p;
    (void)u;
    return s * n;
}

/* Reads an events log (JSON Lines with "body" and "event_id"). */
static int load(const char *path, Body **ret, size_t *ret_n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    Body *v = NULL;
    size_t n = 0, cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t l;
    while ((l = getline(&line, &lcap, f)) > 0) {
        cJSON *o = cJSON_ParseWithLength(line, (size_t)l);
        cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "body");
        cJSON *e = cJSON_GetObjectItemCaseSensitive(o, "event_id");
        if (cJSON_IsString(b) && cJSON_IsString(e)) {
            if (n == cap) {
                cap = cap ? cap * 2 : 1024;
                v = realloc(v, cap * sizeof(*v));
                if (!v)
                    exit(1);
            }
            v[n].text = strdup(b->valuestring);
            v[n].event_id = strdup(e->valuestring);
            v[n].len = strlen(v[n].text);
            n++;
        }
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
    *ret = v;
    *ret_n = n;
    return 0;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *ca = NULL, *bodies = NULL;
    long conc = 64;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--url") == 0)
            url = argv[i + 1];
        else if (strcmp(argv[i], "--ca-file") == 0)
            ca = argv[i + 1];
        else if (strcmp(argv[i], "--bodies") == 0)
            bodies = argv[i + 1];
        else if (strcmp(argv[i], "--concurrency") == 0)
            conc = strtol(argv[i + 1], NULL, 10);
    }
    if (!url || !ca || !bodies || conc < 1 || conc > 1024) {
        fprintf(stderr, "usage: https_post_ceiling --url URL --ca-file CA --bodies EVENTS.jsonl "
                        "[--concurrency N]\n");
        return 2;
    }
    Body *b;
    size_t n;
    if (load(bodies, &b, &n) < 0 || n == 0) {
        fprintf(stderr, "https_post_ceiling: %s: no bodies\n", bodies);
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, conc);
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, conc);
    curl_multi_setopt(m, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    CURL **easy = calloc((size_t)conc, sizeof(*easy));
    struct curl_slist **hdr = calloc((size_t)conc, sizeof(*hdr));
    size_t next = 0, done = 0, ok = 0;
    double t0 = now_s();
    for (long i = 0; i < conc; i++) {
        easy[i] = curl_easy_init();
        CURL *e = easy[i];
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
        curl_easy_setopt(e, CURLOPT_CAINFO, ca);
        curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
        curl_easy_setopt(e, CURLOPT_PROXY, "");
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)(intptr_t)i);
    }
    long idle[1024];
    long n_idle = 0;
    for (long i = 0; i < conc; i++)
        idle[n_idle++] = i;
    while (done < n) {
        while (n_idle > 0 && next < n) {
            long i = idle[--n_idle];
            Body *x = &b[next++];
            char idem[400];
            snprintf(idem, sizeof(idem), "Idempotency-Key: %s", x->event_id);
            curl_slist_free_all(hdr[i]);
            hdr[i] = curl_slist_append(NULL, "Content-Type: application/json");
            hdr[i] = curl_slist_append(hdr[i], "X-Attesto-Protocol: ATTESTO-LOCAL-VAULT-RELAY/1");
            hdr[i] = curl_slist_append(hdr[i], "Accept: application/json");
            hdr[i] = curl_slist_append(hdr[i], "Expect:");
            hdr[i] = curl_slist_append(hdr[i], idem);
            curl_easy_setopt(easy[i], CURLOPT_HTTPHEADER, hdr[i]);
            curl_easy_setopt(easy[i], CURLOPT_POSTFIELDS, x->text);
            curl_easy_setopt(easy[i], CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->len);
            curl_multi_add_handle(m, easy[i]);
        }
        int running;
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int left;
        bool any = false;
        while ((msg = curl_multi_info_read(m, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            char *priv;
            long status = 0;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
            curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            if (msg->data.result == CURLE_OK && status >= 200 && status < 300)
                ok++;
            curl_multi_remove_handle(m, msg->easy_handle);
            idle[n_idle++] = (long)(intptr_t)priv;
            done++;
            any = true;
        }
        if (!any)
            curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    double t = now_s() - t0;
    printf("{\"requests\":%zu,\"ok\":%zu,\"seconds\":%.3f,\"per_s\":%.1f,\"concurrency\":%ld}\n", n,
           ok, t, (double)n / t, conc);
    /* Everything freed, so that the sanitizer build can check the program
     * (tests/perf runs it). */
    for (long i = 0; i < conc; i++) {
        curl_easy_cleanup(easy[i]);
        curl_slist_free_all(hdr[i]);
    }
    free(easy);
    free(hdr);
    curl_multi_cleanup(m);
    curl_global_cleanup();
    for (size_t i = 0; i < n; i++) {
        free(b[i].text);
        free(b[i].event_id);
    }
    free(b);
    return ok == n ? 0 : 1;
}
