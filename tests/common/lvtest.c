/* SPDX-License-Identifier: Apache-2.0 */
/* Helpers for cmocka tests: fresh SoftHSM tokens, running the binary, vectors. */
#include "lvtest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "lv.h"
#include "token.h"

static char *dirs[16];
static size_t ndirs;

const char *lvtest_tmpdir(void)
{
    char tmpl[] = "/tmp/lvtest.XXXXXX";
    char *d = mkdtemp(tmpl);
    if (!d || ndirs >= 16)
        abort();
    dirs[ndirs] = strdup(d);
    return dirs[ndirs++];
}

void lvtest_cleanup(void)
{
    for (size_t i = 0; i < ndirs; i++) {
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dirs[i]);
        if (system(cmd) != 0)
            fprintf(stderr, "lvtest: could not remove %s\n", dirs[i]);
        free(dirs[i]);
    }
    ndirs = 0;
}

Token *lvtest_open_token(const char *module_path, uint8_t pk[32])
{
    TokenConfig c = {
        .module_path = module_path ? module_path : getenv("ATTESTO_LOCAL_VAULT_PKCS11_MODULE"),
        .signing_uri = getenv("ATTESTO_LOCAL_VAULT_SIGNING_KEY"),
        .kek_uri = getenv("ATTESTO_LOCAL_VAULT_ENCRYPTION_KEY"),
        .pin_file = getenv("ATTESTO_LOCAL_VAULT_PIN_FILE"),
    };
    Token *t = NULL;
    bool s, k;
    if (token_open(&c, &t) < 0 || token_keys_init(t, &s, &k) < 0 ||
        token_check_signing_key(t) < 0 || token_check_kek(t) < 0 ||
        (pk && token_public_key(t, pk) < 0))
        fail_msg("token: %s", lv_error());
    return t;
}

const char *lvtest_make_token(const char *label)
{
    const char *dir = lvtest_tmpdir();
    const char *script = getenv("LV_MAKE_TOKEN");
    if (!script)
        abort();
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "'%s' '%s/token' --label '%s'", script, dir,
             label ? label : "attesto");
    FILE *p = popen(cmd, "r");
    if (!p)
        abort();
    char line[1024];
    while (fgets(line, sizeof(line), p)) {
        /* export NAME='value' */
        char *name = line + strlen("export "), *eq = strchr(name, '=');
        if (strncmp(line, "export ", 7) != 0 || !eq)
            continue;
        *eq = '\0';
        char *v = eq + 1;
        size_t n = strlen(v);
        while (n && (v[n - 1] == '\n' || v[n - 1] == '\''))
            v[--n] = '\0';
        if (*v == '\'')
            v++;
        setenv(name, v, 1);
    }
    if (pclose(p) != 0)
        abort();
    return dir;
}

int lvtest_run(char **out, const char *fmt, ...)
{
    char args[4096], cmd[4200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "'%s' %s", getenv("LV_BIN"), args);
    FILE *p = popen(cmd, "r");
    if (!p)
        abort();
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t k;
    while ((k = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += k;
        if (cap - len < 2) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb)
                abort();
            buf = nb;
        }
    }
    buf[len] = '\0';
    int st = pclose(p);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

char *lvtest_vector_path(const char *rel)
{
    const char *v = getenv("LV_VECTORS");
    char *p;
    if (!v || asprintf(&p, "%s/%s", v, rel) < 0)
        abort();
    return p;
}
