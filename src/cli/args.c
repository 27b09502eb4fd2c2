/* SPDX-License-Identifier: Apache-2.0 */
/* The one argument parser of the verbs, and the --help it prints, both
 * from a verb's table of options (include/cli.h). */
#include <stdarg.h>
#include <string.h>

#include "cli.h"
#include "lv.h"

#define USAGE_PREFIX   "Usage: attesto-local-vault [GLOBAL OPTIONS] "
#define HELP_COLUMN    30
#define SYNOPSIS_WIDTH 79

int cli_usage_error(const char *name, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* One line: a value from the command line never breaks it. */
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fprintf(stderr, "%s: %s\n", name, line);
    return CLI_USAGE;
}

/* Appends one word of the synopsis, wrapping lines before SYNOPSIS_WIDTH. */
static void synopsis_word(FILE *f, size_t *col, const char *word)
{
    size_t n = strlen(word);
    if (*col + 1 + n > SYNOPSIS_WIDTH) {
        fprintf(f, "\n        ");
        *col = 8;
    }
    fprintf(f, " %s", word);
    *col += 1 + n;
}

/* The synopsis built from the table: required options first as they must
 * be given, then the others in brackets, then the operands. */
static void print_synopsis(FILE *f, const CliCommand *cmd, size_t col)
{
    char w[160];
    for (const CliOption *o = cmd->options; o && o->name; o++)
        if (o->required) {
            snprintf(w, sizeof(w), "--%s %s", o->name, o->value);
            synopsis_word(f, &col, w);
        }
    for (const CliOption *o = cmd->options; o && o->name; o++) {
        if (o->required)
            continue;
        if (o->value)
            snprintf(w, sizeof(w), "[--%s %s]%s", o->name, o->value,
                     o->kind == CLI_LIST ? "..." : "");
        else
            snprintf(w, sizeof(w), "[--%s]", o->name);
        synopsis_word(f, &col, w);
    }
    if (cmd->operands) {
        snprintf(w, sizeof(w), cmd->min_operands ? "%s" : "[%s]", cmd->operands);
        synopsis_word(f, &col, w);
    }
}

void cli_print_help(FILE *f, const CliCommand *cmd)
{
    fprintf(f, USAGE_PREFIX "%s", cmd->name);
    if (cmd->synopsis)
        fprintf(f, " %s", cmd->synopsis);
    else
        print_synopsis(f, cmd, strlen(USAGE_PREFIX) + strlen(cmd->name));
    fputc('\n', f);
    if (cmd->about)
        fprintf(f, "%s", cmd->about);
    fprintf(f, "Options:\n");
    for (const CliOption *o = cmd->options; o && o->name; o++) {
        char left[128];
        snprintf(left, sizeof(left), "--%s%s%s", o->name, o->value ? " " : "",
                 o->value ? o->value : "");
        /* A long left column puts the help on the next line. */
        if (strlen(left) > HELP_COLUMN - 3)
            fprintf(f, "  %s\n  %-*s %s%s\n", left, HELP_COLUMN - 3, "", o->help,
                    o->required ? " (required)" : "");
        else
            fprintf(f, "  %-*s %s%s\n", HELP_COLUMN - 3, left, o->help,
                    o->required ? " (required)" : "");
    }
    fprintf(f, "  %-*s %s\n", HELP_COLUMN - 3, "--help", "print this help and exit");
}

static const CliOption *find(const CliCommand *cmd, const char *name, size_t len)
{
    for (const CliOption *o = cmd->options; o && o->name; o++)
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
            return o;
    return NULL;
}

/* Decimal only: an optional minus, digits, no leading zeros, no spaces,
 * no "-0". */
static bool parse_int64(const char *v, int64_t *ret)
{
    const char *p = v;
    bool neg = *p == '-';
    if (neg)
        p++;
    size_t n = strlen(p);
    if (n == 0 || n > 19 || (n > 1 && p[0] == '0'))
        return false;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        x = x * 10 + (uint64_t)(p[i] - '0');
    }
    if (x > (uint64_t)INT64_MAX || (neg && x == 0))
        return false;
    *ret = neg ? -(int64_t)x : (int64_t)x;
    return true;
}

static int store(const CliCommand *cmd, const CliOption *o, const char *v, void *args)
{
    char *base = args;
    switch (o->kind) {
    case CLI_FLAG:
        *(bool *)(base + o->offset) = true;
        return 0;
    case CLI_STRING:
        *(const char **)(base + o->offset) = v;
        return 0;
    case CLI_NUMBER: {
        int64_t x;
        if (!parse_int64(v, &x) || x < o->min || x > o->max)
            return cli_usage_error(cmd->name, "--%s: %s: must be an integer from %lld to %lld",
                                   o->name, v, (long long)o->min, (long long)o->max);
        *(int64_t *)(base + o->offset) = x;
        return 0;
    }
    case CLI_LIST: {
        size_t *n = (size_t *)(base + o->count_offset);
        if (*n >= (size_t)o->max)
            return cli_usage_error(cmd->name, "--%s: at most %lld", o->name, (long long)o->max);
        ((const char **)(base + o->offset))[(*n)++] = v;
        return 0;
    }
    }
    return CLI_USAGE;
}

/* The subcommand of family (other than cmd) that has option name, or NULL. */
static const CliCommand *sibling_with(const CliCommand *cmd, const CliCommand *const *family,
                                      size_t n_family, const char *name, size_t len)
{
    for (size_t i = 0; i < n_family; i++)
        if (family[i] != cmd && find(family[i], name, len))
            return family[i];
    return NULL;
}

static int parse(const CliCommand *cmd, const CliCommand *const *family, size_t n_family, int argc,
                 char **argv, void *args, const char **ret_operands, int *ret_n)
{
    size_t n_opts = 0;
    for (const CliOption *o = cmd->options; o && o->name; o++)
        n_opts++;
    bool seen[64] = {false};
    int n = 0;
    bool options_end = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (options_end || a[0] != '-' || strcmp(a, "-") == 0) {
            if (n >= cmd->max_operands)
                return cli_usage_error(cmd->name, "%s: unexpected argument", a);
            if (ret_operands)
                ret_operands[n] = a;
            n++;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            options_end = true;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cli_print_help(stdout, cmd);
            return CLI_HELP;
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        const CliOption *o = strncmp(a, "--", 2) == 0 ? find(cmd, a + 2, len - 2) : NULL;
        if (!o) {
            const CliCommand *s = len > 2 && strncmp(a, "--", 2) == 0
                                      ? sibling_with(cmd, family, n_family, a + 2, len - 2)
                                      : NULL;
            if (s)
                return cli_usage_error(cmd->name, "%.*s: only for %s", (int)len, a,
                                       strchr(s->name, ' ') ? strchr(s->name, ' ') + 1 : s->name);
            return cli_usage_error(cmd->name, "%.*s: unknown option (see --help)", (int)len, a);
        }
        const char *v = NULL;
        if (o->kind == CLI_FLAG) {
            if (eq)
                return cli_usage_error(cmd->name, "--%s: takes no value", o->name);
        } else if (eq) {
            v = eq + 1;
        } else {
            if (i + 1 >= argc)
                return cli_usage_error(cmd->name, "--%s: needs a value (%s)", o->name, o->value);
            v = argv[++i];
        }
        int r = store(cmd, o, v, args);
        if (r != 0)
            return r;
        size_t k = (size_t)(o - cmd->options);
        if (k < ELEMENTSOF(seen))
            seen[k] = true;
    }
    for (size_t k = 0; k < n_opts && k < ELEMENTSOF(seen); k++)
        if (cmd->options[k].required && !seen[k])
            return cli_usage_error(cmd->name, "--%s: required", cmd->options[k].name);
    if (n < cmd->min_operands)
        return cli_usage_error(cmd->name, "%s: missing (see --help)", cmd->operands);
    if (ret_n)
        *ret_n = n;
    return 0;
}

int cli_parse(const CliCommand *cmd, int argc, char **argv, void *args, const char **ret_operands,
              int *ret_n)
{
    return parse(cmd, NULL, 0, argc, argv, args, ret_operands, ret_n);
}

int cli_parse_subcommand(const char *verb, int argc, char **argv, const CliCommand *const *subs,
                         size_t n, int *ret_index, void *args, const char **ret_operands,
                         int *ret_n)
{
    char names[256] = "";
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *sub = strchr(subs[i]->name, ' ');
        int k = snprintf(names + len, sizeof(names) - len, "%s%s", i ? ", " : "",
                         sub ? sub + 1 : subs[i]->name);
        if (k > 0 && (size_t)k < sizeof(names) - len)
            len += (size_t)k;
    }
    if (argc < 2)
        return cli_usage_error(verb, "missing subcommand (%s)", names);
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        for (size_t i = 0; i < n; i++) {
            if (i)
                fputc('\n', stdout);
            cli_print_help(stdout, subs[i]);
        }
        return CLI_HELP;
    }
    for (size_t i = 0; i < n; i++) {
        const char *sub = strchr(subs[i]->name, ' ');
        if (sub && strcmp(sub + 1, argv[1]) == 0) {
            *ret_index = (int)i;
            return parse(subs[i], subs, n, argc - 1, argv + 1, args, ret_operands, ret_n);
        }
    }
    return cli_usage_error(verb, "%s: unknown subcommand (%s)", argv[1], names);
}
