/* SPDX-License-Identifier: Apache-2.0 */
/* Witness verbs (placeholder until implemented). */
#include <stdio.h>
#include "cli.h"
#include "lv.h"

int witness_checkpoint_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

int witness_serve_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

int witness_forks_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

