/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTPS relay over libcurl's multi interface: hardened transfer options,
 * a response cap in the write callback, Retry-After and failure reasons. */
#include "relay.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <pthread.h>
#include <strings.h>
#include <sys/stat.h>

#include "lv.h"
#include "version.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 10000L
#define DEFAULT_TIMEOUT_MS         30000L
#define DEFAULT_LOW_SPEED_BYTES    64L
#define DEFAULT_LOW_SPEED_TIME_S   15L
#define DEFAULT_MAX_CONNECTIONS    64u

typedef struct Transfer {
    Relay *relay;
    CURL *easy;
    bool busy;
    uint64_t tag;
    struct curl_slist *headers;
    char *buf; /* response body, grown up to RELAY_MAX_RESPONSE */
    size_t len, cap;
    bool too_large;
    char retry_after[128]; /* raw header value of the final response */
    char errbuf[CURL_ERROR_SIZE];
    int64_t started_ms;
} Transfer;

struct Relay {
    CURLM *multi;
    RelayOptions opt;
    char *url, *ca_file, *pinned;
    char *auth_header; /* "Authorization: Bearer ..." or NULL; wiped when freed */
    Transfer **xfers;
    size_t n_xfers;
    size_t in_flight;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init(void)
{
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

const char *relay_reason_for_curl(int code)
{
    switch ((CURLcode)code) {
    case CURLE_OK:
        return NULL;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_INVALIDCERTSTATUS:
        return "tls_verify_failed";
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        return "tls_pin_mismatch";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_USE_SSL_FAILED:
        return "tls_handshake_failed";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "dns_failed";
    case CURLE_COULDNT_CONNECT:
        return "connect_failed";
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return "connection_dropped";
    case CURLE_PARTIAL_FILE:
        return "response_truncated";
    case CURLE_WRITE_ERROR:
        return "response_too_large";
    case CURLE_UNSUPPORTED_PROTOCOL:
        return "protocol_refused";
    case CURLE_TOO_MANY_REDIRECTS:
        return "redirect_refused";
    case CURLE_WEIRD_SERVER_REPLY:
        return "bad_http_response";
    default:
        return "transport_error";
    }
}

int relay_parse_retry_after(const char *value, int64_t now_ms, int64_t *ret_ms)
{
    char v[128];
    while (*value == ' ' || *value == '\t')
        value++;
    size_t n = strlen(value);
    while (n > 0 && (value[n - 1] == ' ' || value[n - 1] == '\t' || value[n - 1] == '\r' ||
                     value[n - 1] == '\n'))
        n--;
    if (n == 0 || n >= sizeof(v))
        return LV_ERR_INPUT;
    memcpy(v, value, n);
    v[n] = '\0';
    int64_t ms;
    if (strspn(v, "0123456789") == n) {
        /* delta-seconds; anything past the cap is the cap, so no overflow */
        ms = n > 6 ? (int64_t)RELAY_RETRY_AFTER_CAP_S * 1000 : (int64_t)atol(v) * 1000;
    } else {
        time_t t = curl_getdate(v, NULL);
        if (t == (time_t)-1)
            return LV_ERR_INPUT;
        ms = (int64_t)t * 1000 - now_ms;
        if (ms < 0)
            ms = 0;
    }
    if (ms > (int64_t)RELAY_RETRY_AFTER_CAP_S * 1000)
        ms = (int64_t)RELAY_RETRY_AFTER_CAP_S * 1000;
    *ret_ms = ms;
    return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    Transfer *x = userdata;
    size_t n = size * nmemb;
    if (n > RELAY_MAX_RESPONSE - x->len) {
        /* Returning short aborts the transfer: a receiver never needs more,
         * and nothing lets it make us buffer more. */
        x->too_large = true;
        return 0;
    }
    if (x->len + n + 1 > x->cap) {
        size_t cap = x->cap ? x->cap : 1024;
        while (cap < x->len + n + 1)
            cap *= 2;
        if (cap > RELAY_MAX_RESPONSE + 1)
            cap = RELAY_MAX_RESPONSE + 1;
        char *b = realloc(x->buf, cap);
        if (!b)
            return 0;
        x->buf = b;
        x->cap = cap;
    }
    memcpy(x->buf + x->len, data, n);
    x->len += n;
    x->buf[x->len] = '\0';
    return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userdata)
{
    Transfer *x = userdata;
    size_t n = size * nmemb;
    /* A new status line starts a new response (after 1xx): forget the old. */
    if (n >= 5 && strncmp(data, "HTTP/", 5) == 0)
        x->retry_after[0] = '\0';
    else if (n > 12 && strncasecmp(data, "Retry-After:", 12) == 0) {
        size_t vl = n - 12;
        if (vl >= sizeof(x->retry_after))
            vl = sizeof(x->retry_after) - 1;
        memcpy(x->retry_after, data + 12, vl);
        x->retry_after[vl] = '\0';
    }
    return n;
}

#define SETOPT(e, o, v)                                                                            \
    do {                                                                                           \
        if (curl_easy_setopt((e), (o), (v)) != CURLE_OK)                                           \
            return lv_error_set(-EIO, "relay: libcurl refused option %s", #o);                     \
    } while (0)

/* The fixed, security-relevant options of every transfer. */
static int setup_easy(Relay *r, Transfer *x)
{
    CURL *e = x->easy;
    SETOPT(e, CURLOPT_URL, r->url);
    SETOPT(e, CURLOPT_PROTOCOLS_STR, "https");
    /* No redirect is ever followed; the list below only matters if that
     * ever changed, and then it would still be https only. */
    SETOPT(e, CURLOPT_REDIR_PROTOCOLS_STR, "https");
    SETOPT(e, CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(e, CURLOPT_MAXREDIRS, 0L);
    SETOPT(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    SETOPT(e, CURLOPT_SSL_VERIFYPEER, 1L);
    SETOPT(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (r->ca_file)
        SETOPT(e, CURLOPT_CAINFO, r->ca_file);
    if (r->pinned)
        SETOPT(e, CURLOPT_PINNEDPUBLICKEY, r->pinned);
    SETOPT(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    SETOPT(e, CURLOPT_PIPEWAIT, 1L);
    /* Environment proxies are not honoured: where envelopes go is decided
     * by --relay-url alone (docs/protocol.md). */
    SETOPT(e, CURLOPT_PROXY, "");
    SETOPT(e, CURLOPT_CONNECTTIMEOUT_MS, r->opt.connect_timeout_ms);
    SETOPT(e, CURLOPT_TIMEOUT_MS, r->opt.timeout_ms);
    SETOPT(e, CURLOPT_LOW_SPEED_LIMIT, r->opt.low_speed_bytes);
    SETOPT(e, CURLOPT_LOW_SPEED_TIME, r->opt.low_speed_time_s);
    SETOPT(e, CURLOPT_NOSIGNAL, 1L);
    SETOPT(e, CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(e, CURLOPT_USERAGENT, "attesto-local-vault/" LV_VERSION);
    SETOPT(e, CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(e, CURLOPT_WRITEDATA, x);
    SETOPT(e, CURLOPT_HEADERFUNCTION, on_header);
    SETOPT(e, CURLOPT_HEADERDATA, x);
    SETOPT(e, CURLOPT_ERRORBUFFER, x->errbuf);
    SETOPT(e, CURLOPT_PRIVATE, x);
    SETOPT(e, CURLOPT_POST, 1L);
    return 0;
}

int relay_new(const RelayOptions *opt, Relay **ret)
{
    if (!opt->url || strncasecmp(opt->url, "https://", 8) != 0 || !opt->url[8])
        return lv_error_set(LV_ERR_INPUT, "--relay-url: must be an https:// URL");
    if (opt->ca_file && access(opt->ca_file, R_OK) < 0)
        return lv_error_set(LV_ERR_INPUT, "--ca-file: %s: %s", opt->ca_file, strerror(errno));
    pthread_once(&curl_once, curl_init);
    if (curl_init_result != CURLE_OK)
        return lv_error_set(-EIO, "relay: libcurl initialisation failed: %s",
                            curl_easy_strerror(curl_init_result));
    Relay *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->opt = *opt;
    if (!r->opt.connect_timeout_ms)
        r->opt.connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
    if (!r->opt.timeout_ms)
        r->opt.timeout_ms = DEFAULT_TIMEOUT_MS;
    if (!r->opt.low_speed_bytes)
        r->opt.low_speed_bytes = DEFAULT_LOW_SPEED_BYTES;
    if (!r->opt.low_speed_time_s)
        r->opt.low_speed_time_s = DEFAULT_LOW_SPEED_TIME_S;
    if (!r->opt.max_connections)
        r->opt.max_connections = DEFAULT_MAX_CONNECTIONS;
    r->url = strdup(opt->url);
    r->ca_file = opt->ca_file ? strdup(opt->ca_file) : NULL;
    r->pinned = opt->pinned_public_key ? strdup(opt->pinned_public_key) : NULL;
    r->opt.bearer = NULL; /* only the relay's own copy, in the header */
    if (opt->bearer) {
        size_t n = strlen("Authorization: Bearer ") + strlen(opt->bearer) + 1;
        r->auth_header = malloc(n);
        if (r->auth_header)
            snprintf(r->auth_header, n, "Authorization: Bearer %s", opt->bearer);
    }
    r->multi = curl_multi_init();
    if (!r->url || (opt->ca_file && !r->ca_file) || (opt->pinned_public_key && !r->pinned) ||
        (opt->bearer && !r->auth_header) || !r->multi) {
        relay_free(r);
        return -ENOMEM;
    }
    curl_multi_setopt(r->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    curl_multi_setopt(r->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)r->opt.max_connections);
    curl_multi_setopt(r->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)r->opt.max_connections);
    curl_multi_setopt(r->multi, CURLMOPT_MAXCONNECTS, (long)r->opt.max_connections);
    *ret = r;
    return 0;
}

/* Frees a header list after wiping it: one of them may be the credential. */
static void headers_free(struct curl_slist *h)
{
    for (struct curl_slist *t = h; t; t = t->next)
        if (t->data)
            explicit_bzero(t->data, strlen(t->data));
    curl_slist_free_all(h);
}

/* Appends the credential header, if there is one: 0, or -ENOMEM (h freed). */
static int add_auth(const Relay *r, struct curl_slist **h)
{
    if (!r->auth_header)
        return 0;
    struct curl_slist *t = curl_slist_append(*h, r->auth_header);
    if (!t) {
        headers_free(*h);
        *h = NULL;
        return -ENOMEM;
    }
    *h = t;
    return 0;
}

static void transfer_free(Transfer *x)
{
    if (!x)
        return;
    if (x->easy)
        curl_easy_cleanup(x->easy);
    headers_free(x->headers);
    free(x->buf);
    free(x);
}

Relay *relay_free(Relay *r)
{
    if (!r)
        return NULL;
    for (size_t i = 0; i < r->n_xfers; i++) {
        if (r->xfers[i]->busy)
            curl_multi_remove_handle(r->multi, r->xfers[i]->easy);
        transfer_free(r->xfers[i]);
    }
    free(r->xfers);
    if (r->auth_header) {
        explicit_bzero(r->auth_header, strlen(r->auth_header));
        free(r->auth_header);
    }
    if (r->multi)
        curl_multi_cleanup(r->multi);
    free(r->url);
    free(r->ca_file);
    free(r->pinned);
    free(r);
    return NULL;
}

static int get_transfer(Relay *r, Transfer **ret)
{
    for (size_t i = 0; i < r->n_xfers; i++)
        if (!r->xfers[i]->busy) {
            *ret = r->xfers[i];
            return 0;
        }
    Transfer **v = realloc(r->xfers, (r->n_xfers + 1) * sizeof(*v));
    if (!v)
        return -ENOMEM;
    r->xfers = v;
    Transfer *x = calloc(1, sizeof(*x));
    if (!x)
        return -ENOMEM;
    x->relay = r;
    x->easy = curl_easy_init();
    if (!x->easy) {
        free(x);
        return -ENOMEM;
    }
    int k = setup_easy(r, x);
    if (k < 0) {
        transfer_free(x);
        return k;
    }
    r->xfers[r->n_xfers++] = x;
    *ret = x;
    return 0;
}

int relay_submit(Relay *r, uint64_t tag, const char *event_id, const char *body, size_t len)
{
    Transfer *x;
    int k = get_transfer(r, &x);
    if (k < 0)
        return k;
    char idem[400];
    if ((size_t)snprintf(idem, sizeof(idem), "Idempotency-Key: %s", event_id) >= sizeof(idem))
        return lv_error_set(LV_ERR_INPUT, "event_id: too long for a header");
    struct curl_slist *h = NULL, *t;
    static const char *const fixed[] = {
        "Content-Type: application/json", "X-Attesto-Protocol: " RELAY_PROTOCOL,
        "Accept: application/json", "Expect:", /* no 100-continue round trip */
    };
    for (size_t i = 0; i < ELEMENTSOF(fixed); i++) {
        t = curl_slist_append(h, fixed[i]);
        if (!t)
            goto oom;
        h = t;
    }
    t = curl_slist_append(h, idem);
    if (!t)
        goto oom;
    h = t;
    if (add_auth(r, &h) < 0)
        return -ENOMEM;
    headers_free(x->headers);
    x->headers = h;
    x->tag = tag;
    x->len = 0;
    x->too_large = false;
    x->retry_after[0] = '\0';
    x->errbuf[0] = '\0';
    x->started_ms = lv_mono_ms();
    if (curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers) != CURLE_OK ||
        curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, body) != CURLE_OK ||
        curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len) != CURLE_OK)
        return lv_error_set(-EIO, "relay: cannot set up the request");
    CURLMcode mc = curl_multi_add_handle(r->multi, x->easy);
    if (mc != CURLM_OK)
        return lv_error_set(-EIO, "relay: %s", curl_multi_strerror(mc));
    x->busy = true;
    r->in_flight++;
    return 0;
oom:
    headers_free(h);
    return -ENOMEM;
}

size_t relay_in_flight(const Relay *r)
{
    return r->in_flight;
}

static void finish(Relay *r, Transfer *x, CURLcode code, relay_done_fn done, void *userdata)
{
    RelayResult res = {.tag = x->tag, .retry_after_ms = -1};
    res.elapsed_ms = lv_mono_ms() - x->started_ms;
    if (code == CURLE_OK) {
        long status = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        res.http_status = status;
        res.body = x->buf ? x->buf : "";
        res.body_len = x->len;
        int64_t ra;
        if (x->retry_after[0] && relay_parse_retry_after(x->retry_after, lv_now_ms(), &ra) == 0)
            res.retry_after_ms = ra;
    } else {
        res.transport_reason = x->too_large ? "response_too_large" : relay_reason_for_curl(code);
        if (code == CURLE_WRITE_ERROR && !x->too_large)
            res.transport_reason = "transport_error";
        snprintf(res.detail, sizeof(res.detail), "%s",
                 x->errbuf[0] ? x->errbuf : curl_easy_strerror(code));
    }
    curl_multi_remove_handle(r->multi, x->easy);
    x->busy = false;
    r->in_flight--;
    done(userdata, &res);
}

static int collect(Relay *r, relay_done_fn done, void *userdata)
{
    int n = 0, left;
    CURLMsg *m;
    while ((m = curl_multi_info_read(r->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        Transfer *x = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        CURLcode code = m->data.result;
        finish(r, x, code, done, userdata);
        n++;
    }
    return n;
}

int relay_run(Relay *r, int timeout_ms, struct pollfd *extra, size_t n_extra, relay_done_fn done,
              void *userdata)
{
    int running;
    CURLMcode mc = curl_multi_perform(r->multi, &running);
    if (mc != CURLM_OK)
        return lv_error_set(-EIO, "relay: %s", curl_multi_strerror(mc));
    int n = collect(r, done, userdata);
    if (n > 0) {
        /* No wait, but the extra fds' revents are still due: under a steady
         * stream of completions this path is the only one taken, and a
         * caller that never saw its signalfd ready would never stop. */
        for (size_t i = 0; i < n_extra; i++)
            extra[i].revents = 0;
        if (n_extra > 0 && poll(extra, n_extra, 0) < 0 && errno != EINTR)
            return lv_error_set(-errno, "relay: poll: %s", strerror(errno));
        return n;
    }
    struct curl_waitfd w[8];
    if (n_extra > ELEMENTSOF(w))
        return -EINVAL;
    for (size_t i = 0; i < n_extra; i++) {
        w[i] = (struct curl_waitfd){.fd = extra[i].fd, .events = 0};
        if (extra[i].events & POLLIN)
            w[i].events |= CURL_WAIT_POLLIN;
        if (extra[i].events & POLLOUT)
            w[i].events |= CURL_WAIT_POLLOUT;
        extra[i].revents = 0;
    }
    mc = curl_multi_poll(r->multi, w, (unsigned)n_extra, timeout_ms, NULL);
    if (mc != CURLM_OK)
        return lv_error_set(-EIO, "relay: %s", curl_multi_strerror(mc));
    for (size_t i = 0; i < n_extra; i++) {
        if (w[i].revents & CURL_WAIT_POLLIN)
            extra[i].revents |= POLLIN;
        if (w[i].revents & CURL_WAIT_POLLOUT)
            extra[i].revents |= POLLOUT;
    }
    mc = curl_multi_perform(r->multi, &running);
    if (mc != CURLM_OK)
        return lv_error_set(-EIO, "relay: %s", curl_multi_strerror(mc));
    return collect(r, done, userdata);
}

void relay_abort_all(Relay *r, relay_done_fn done, void *userdata)
{
    for (size_t i = 0; i < r->n_xfers; i++) {
        Transfer *x = r->xfers[i];
        if (!x->busy)
            continue;
        curl_multi_remove_handle(r->multi, x->easy);
        x->busy = false;
        r->in_flight--;
        RelayResult res = {.tag = x->tag, .transport_reason = "aborted", .retry_after_ms = -1};
        snprintf(res.detail, sizeof(res.detail), "aborted at shutdown");
        if (done)
            done(userdata, &res);
    }
}

/* ---- doctor's probe ------------------------------------------------------ */

typedef struct ProbeHeaders {
    char allow[128];
    bool protocol_ok;
} ProbeHeaders;

static void header_value(const char *data, size_t n, size_t name_len, char *out, size_t cap)
{
    const char *v = data + name_len;
    size_t vl = n - name_len;
    while (vl && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
        vl--;
    if (vl >= cap)
        vl = cap - 1;
    memcpy(out, v, vl);
    out[vl] = '\0';
}

static size_t on_probe_header(char *data, size_t size, size_t nmemb, void *userdata)
{
    ProbeHeaders *h = userdata;
    size_t n = size * nmemb;
    static const char allow[] = "Allow:", proto[] = "X-Attesto-Protocol:";
    if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        *h = (ProbeHeaders){0};
    } else if (n > sizeof(allow) - 1 && strncasecmp(data, allow, sizeof(allow) - 1) == 0) {
        header_value(data, n, sizeof(allow) - 1, h->allow, sizeof(h->allow));
    } else if (n > sizeof(proto) - 1 && strncasecmp(data, proto, sizeof(proto) - 1) == 0) {
        char v[64];
        header_value(data, n, sizeof(proto) - 1, v, sizeof(v));
        h->protocol_ok = strcmp(v, RELAY_PROTOCOL) == 0;
    }
    return n;
}

/* How far a failed transfer got, from the code and the phase timings. */
static const char *probe_stage(CURL *e, CURLcode code, const char *reason)
{
    if (code == CURLE_OK)
        return "http";
    if (code == CURLE_COULDNT_RESOLVE_HOST)
        return "dns";
    if (code == CURLE_COULDNT_CONNECT)
        return "tcp";
    if (reason && strncmp(reason, "tls_", 4) == 0)
        return "tls";
    curl_off_t connected = 0, handshaken = 0, resolved = 0;
    curl_easy_getinfo(e, CURLINFO_NAMELOOKUP_TIME_T, &resolved);
    curl_easy_getinfo(e, CURLINFO_CONNECT_TIME_T, &connected);
    curl_easy_getinfo(e, CURLINFO_APPCONNECT_TIME_T, &handshaken);
    if (handshaken > 0)
        return "http";
    if (connected > 0)
        return "tls";
    if (resolved > 0)
        return "tcp";
    return "dns";
}

int relay_probe(const RelayOptions *opt, RelayProbe *ret)
{
    Relay *r = NULL;
    int k = relay_new(opt, &r);
    if (k < 0)
        return k;
    Transfer *x = NULL;
    k = get_transfer(r, &x);
    if (k < 0) {
        relay_free(r);
        return k;
    }
    *ret = (RelayProbe){0};
    ProbeHeaders ph = {0};
    struct curl_slist *h = curl_slist_append(NULL, "X-Attesto-Protocol: " RELAY_PROTOCOL);
    struct curl_slist *h2 = h ? curl_slist_append(h, "Accept: application/json") : NULL;
    if (!h2) {
        curl_slist_free_all(h);
        relay_free(r);
        return -ENOMEM;
    }
    /* doctor asks with the credential, so that a 401/403 names it. */
    if (add_auth(r, &h2) < 0) {
        relay_free(r);
        return -ENOMEM;
    }
    x->headers = h2;
    CURL *e = x->easy;
    /* The same hardened handle as a POST (setup_easy); only the method,
     * the headers and the header callback differ. HTTPGET clears POST, so
     * no body is read from anywhere. */
    if (curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "OPTIONS") != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_probe_header) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HEADERDATA, &ph) != CURLE_OK) {
        relay_free(r);
        return lv_error_set(-EIO, "relay: cannot set up the probe request");
    }
    x->started_ms = lv_mono_ms();
    CURLcode code = curl_easy_perform(e);
    ret->elapsed_ms = lv_mono_ms() - x->started_ms;
    if (code == CURLE_OK) {
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &ret->http_status);
        snprintf(ret->allow, sizeof(ret->allow), "%s", ph.allow);
        ret->protocol_ok = ph.protocol_ok;
    } else {
        ret->transport_reason = x->too_large ? "response_too_large" : relay_reason_for_curl(code);
        snprintf(ret->detail, sizeof(ret->detail), "%s",
                 x->errbuf[0] ? x->errbuf : curl_easy_strerror(code));
    }
    ret->stage = probe_stage(e, code, ret->transport_reason);
    relay_free(r);
    return 0;
}

/* ---- the bearer credential ---------------------------------------------- */

#define CREDENTIAL_MAX  4096
#define CREDENTIAL_READ (CREDENTIAL_MAX + 3)

/* RFC 6750 §2.1 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" /
 * "/" ) *"=" */
static bool b64token(const char *s, size_t n)
{
    size_t i = 0;
    for (; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/'))
            break;
    }
    if (i == 0)
        return false;
    for (; i < n; i++)
        if (s[i] != '=')
            return false;
    return true;
}

void relay_credential_free(char *secret)
{
    if (!secret)
        return;
    explicit_bzero(secret, strlen(secret));
    free(secret);
}

const char *relay_credential_check(char *buf, size_t *len)
{
    size_t n = *len;
    if (n && buf[n - 1] == '\n')
        buf[--n] = '\0';
    if (n && buf[n - 1] == '\r')
        buf[--n] = '\0';
    *len = n;
    if (n > CREDENTIAL_MAX)
        return "longer than 4096 bytes";
    if (n == 0)
        return "empty";
    if (memchr(buf, '\n', n))
        return "must hold one line (the credential)";
    if (memchr(buf, '\0', n) || !b64token(buf, n))
        return "must be an RFC 6750 bearer token (letters, digits, -._~+/ then '=' padding)";
    return NULL;
}

/* Reads one credential file: 0, -ENOENT (silently: the source is absent),
 * or LV_ERR_INPUT naming the file and the rule. */
static int read_credential(const char *path, char **ret)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ENOENT)
            return -ENOENT;
        return lv_error_set(LV_ERR_INPUT, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) < 0)
        return lv_error_set(LV_ERR_INPUT, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return lv_error_set(LV_ERR_INPUT, "%s: must be a regular file", path);
    if (st.st_mode & 0007)
        return lv_error_set(LV_ERR_INPUT,
                            "%s: mode %04o: others must not read or write a credential (chmod "
                            "0600 or 0640)",
                            path, (unsigned)(st.st_mode & 07777));
    /* Up to the longest credential, CR, LF and one byte more: a file that
     * fills it is too long whatever its end. */
    char *buf = calloc(1, CREDENTIAL_READ + 1);
    if (!buf)
        return -ENOMEM;
    size_t len = 0;
    for (;;) {
        ssize_t k = read(fd, buf + len, CREDENTIAL_READ - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int e = errno;
            explicit_bzero(buf, CREDENTIAL_READ + 1);
            free(buf);
            return lv_error_set(LV_ERR_INPUT, "%s: %s", path, strerror(e));
        }
        if (k == 0 || (len += (size_t)k) == CREDENTIAL_READ)
            break;
    }
    const char *rule =
        len == CREDENTIAL_READ ? "longer than 4096 bytes" : relay_credential_check(buf, &len);
    if (rule) {
        explicit_bzero(buf, CREDENTIAL_READ + 1);
        free(buf);
        /* The content is never quoted: it may be the secret. */
        return lv_error_set(LV_ERR_INPUT, "%s: %s", path, rule);
    }
    *ret = buf;
    return 0;
}

int relay_credential_load(const char *file, char **ret, char source[4096])
{
    *ret = NULL;
    source[0] = '\0';
    const char *creds = getenv("CREDENTIALS_DIRECTORY");
    if (creds && *creds) {
        snprintf(source, 4096, "%s/relay-token", creds);
        int r = read_credential(source, ret);
        if (r != -ENOENT)
            return r;
        source[0] = '\0';
    }
    if (!file)
        return 0;
    snprintf(source, 4096, "%s", file);
    int r = read_credential(source, ret);
    if (r == -ENOENT)
        return lv_error_set(LV_ERR_INPUT, "%s: does not exist", file);
    return r;
}
