/* SPDX-License-Identifier: Apache-2.0 */
/* Runs a fuzz target's entry point over the files of its seed corpus without
 * libFuzzer, so the normal (and ASan) test builds replay every seed. */
#include "lv.h"

#include <dirent.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REPLAY_MAX_INPUT (16 * 1024 * 1024)

static int replay_file(const char *path)
{
    _cleanup_free_ char *data = NULL;
    size_t len = 0;
    if (lv_read_file(path, REPLAY_MAX_INPUT, &data, &len) < 0) {
        fprintf(stderr, "%s\n", lv_error());
        return -1;
    }
    /* An exact-size copy, so ASan sees reads past the end of the input. */
    _cleanup_free_ uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return -1;
    memcpy(copy, data, len);
    LLVMFuzzerTestOneInput(copy, len);
    return 0;
}

int main(int argc, char **argv)
{
    size_t count = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (replay_file(argv[i]) < 0)
                return 1;
            count++;
            continue;
        }
        struct dirent **names;
        int n = scandir(argv[i], &names, NULL, alphasort);
        if (n < 0) {
            fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        int r = 0;
        for (int k = 0; k < n; k++) {
            if (r == 0 && names[k]->d_name[0] != '.') {
                char path[4096];
                snprintf(path, sizeof(path), "%s/%s", argv[i], names[k]->d_name);
                if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                    r = replay_file(path);
                    count++;
                }
            }
            free(names[k]);
        }
        free(names);
        if (r < 0)
            return 1;
    }
    if (count == 0) {
        fprintf(stderr, "no corpus inputs given\n");
        return 1;
    }
    printf("replayed %zu inputs\n", count);
    return 0;
}
