/* SPDX-License-Identifier: Apache-2.0 */
/* Logging: structured journal entries under systemd, one plain line on stderr otherwise. */
#include "log.h"
#include "lv.h"

#define SD_JOURNAL_SUPPRESS_LOCATION
#include <strings.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>

static int max_level = LV_LOG_INFO;
static const char *prog = "attesto-local-vault";

void log_set_level(int level)
{
    max_level = level;
}

int log_get_level(void)
{
    return max_level;
}

void log_set_prog(const char *p)
{
    prog = p;
}

int log_level_from_string(const char *s)
{
    static const struct {
        const char *name;
        int level;
    } names[] = {{"error", LV_LOG_ERR},
                 {"warning", LV_LOG_WARNING},
                 {"notice", LV_LOG_NOTICE},
                 {"info", LV_LOG_INFO},
                 {"debug", LV_LOG_DEBUG}};
    for (size_t i = 0; i < ELEMENTSOF(names); i++)
        if (strcasecmp(s, names[i].name) == 0)
            return names[i].level;
    return -1;
}

/* stderr connected to the journal (JOURNAL_STREAM matches its dev:ino) means
 * we run under systemd and can send structured fields instead. */
static bool to_journal(void)
{
    static int cached = -1;
    if (cached < 0) {
        const char *js = getenv("JOURNAL_STREAM");
        struct stat st;
        unsigned long long dev, ino;
        cached = js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
                 (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
    }
    return cached;
}

void log_fields(int level, const char *const *fields, const char *fmt, ...)
{
    if (level > max_level)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    if (to_journal()) {
        struct iovec iov[16];
        char prio[32], message[2100], ident[96];
        size_t n = 0;
        snprintf(prio, sizeof(prio), "PRIORITY=%d", level);
        snprintf(message, sizeof(message), "MESSAGE=%s", msg);
        /* journalctl -t and syslog forwarding key on the identifier; the
         * native protocol does not add one by itself. */
        snprintf(ident, sizeof(ident), "SYSLOG_IDENTIFIER=%s", prog);
        iov[n++] = (struct iovec){prio, strlen(prio)};
        iov[n++] = (struct iovec){message, strlen(message)};
        iov[n++] = (struct iovec){ident, strlen(ident)};
        for (size_t i = 0; fields && fields[i] && n < ELEMENTSOF(iov); i++)
            iov[n++] = (struct iovec){(void *)fields[i], strlen(fields[i])};
        if (sd_journal_sendv(iov, (int)n) >= 0)
            return;
    }
    fprintf(stderr, "%s: %s", prog, msg);
    for (size_t i = 0; fields && fields[i]; i++)
        fprintf(stderr, " %s", fields[i]);
    fputc('\n', stderr);
}
