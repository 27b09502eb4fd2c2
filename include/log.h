/* SPDX-License-Identifier: Apache-2.0 */
/* Logging for the top layer only: the journal under systemd, stderr
 * otherwise. Never pass secrets or payloads. */
#pragma once
#include <stdarg.h>

enum { LV_LOG_ERR = 3, LV_LOG_WARNING = 4, LV_LOG_NOTICE = 5, LV_LOG_INFO = 6, LV_LOG_DEBUG = 7 };

void log_set_level(int level);
int log_get_level(void);
/* Parses "error|warning|notice|info|debug"; returns -1 if unknown. */
int log_level_from_string(const char *s);
void log_set_prog(const char *prog);
/* fields: NULL or a NULL-terminated list of "KEY=value" strings for the
 * journal (EVENT_ID=..., STREAM_ID=..., ATTEMPT=..., REASON=...). */
void log_fields(int level, const char *const *fields, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define log_error(...)   log_fields(LV_LOG_ERR, NULL, __VA_ARGS__)
#define log_warning(...) log_fields(LV_LOG_WARNING, NULL, __VA_ARGS__)
#define log_notice(...)  log_fields(LV_LOG_NOTICE, NULL, __VA_ARGS__)
#define log_info(...)    log_fields(LV_LOG_INFO, NULL, __VA_ARGS__)
#define log_debug(...)   log_fields(LV_LOG_DEBUG, NULL, __VA_ARGS__)
