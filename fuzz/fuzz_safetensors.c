/* fuzz_safetensors.c - libFuzzer target: the input is a safetensors file, parsed in place by
 * safetensors_parse (tools/convert/safetensors.c and the JSON reader under it). A refused file
 * must leave the ckpt_file empty; an accepted one must satisfy fuzz_ckpt_check, and its tensors
 * must not overlap (safetensors.c refuses files whose tensors share bytes). */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_ckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ckpt_file f;
    if (safetensors_parse(data, size, &f) != LMOE_OK) {
        FUZZ_CHECK(f.tensors == NULL && f.n_tensors == 0);
        return 0;
    }
    fuzz_ckpt_check(&f, data, size);
    fuzz_ckpt_check_disjoint(&f);
    ckpt_file_close(&f);
    return 0;
}
