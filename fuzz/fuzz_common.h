/* fuzz_common.h - helpers shared by the libFuzzer targets (fuzz/README in run.sh). */
#ifndef LMOE_FUZZ_COMMON_H
#define LMOE_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#include "llamamoe.h"

/* Loads the model named by $LMOE_FUZZ_MODEL (a GGUF file) or aborts: a fuzz target without its
 * model would only exercise the error path and report nothing useful. */
static lmoe_model *fuzz_load_env_model(int vocab_only) {
    const char *path = getenv("LMOE_FUZZ_MODEL");
    if (!path || !*path) {
        fprintf(stderr, "fuzz: set LMOE_FUZZ_MODEL to a GGUF model (see fuzz/run.sh)\n");
        abort();
    }
    lmoe_model_params mp;
    lmoe_model_default_params(&mp, sizeof mp);
    mp.vocab_only = vocab_only;
    lmoe_model *model = NULL;
    if (lmoe_model_load(path, &mp, &model) != LMOE_OK) {
        fprintf(stderr, "fuzz: cannot load %s: %s\n", path, lmoe_last_error());
        abort();
    }
    return model;
}

#endif
