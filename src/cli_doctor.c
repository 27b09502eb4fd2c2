/* SPDX-License-Identifier: Apache-2.0 */
/* doctor (placeholder until implemented). */
#include <stdio.h>
#include "cli.h"
#include "lv.h"

int doctor_main(const Config *cfg, int argc, char **argv)
{
    fprintf(stderr, "%s: not implemented yet\n", argv[0]);
    return LV_EXIT_FAILURE;
}

