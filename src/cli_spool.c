/* SPDX-License-Identifier: Apache-2.0 */
/* Spool verbs (placeholder until implemented). */
#include <stdio.h>
#include "cli.h"
#include "lv.h"

int enqueue_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

int status_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

int list_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

int show_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

int dead_letter_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

int purge_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

int verify_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

