/* SPDX-License-Identifier: Apache-2.0 */
/* Relay verbs (placeholder until implemented). */
#include <stdio.h>
#include "cli.h"
#include "lv.h"

int drain_once_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

int drain_loop_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

