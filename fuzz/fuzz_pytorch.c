/* fuzz_pytorch.c - libFuzzer target: the input is a torch.save zip, parsed in place by
 * pytorch_zip_parse (the zip container in zip_archive.c, the restricted pickle machine in
 * pickle.c and the state-dict glue in pytorch_zip.c). A refused file must leave the ckpt_file
 * empty; an accepted one must satisfy fuzz_ckpt_check (tensors may share a storage, as views do in
 * torch, so they may overlap). */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_ckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ckpt_file f;
    if (pytorch_zip_parse(data, size, &f) != LMOE_OK) {
        FUZZ_CHECK(f.tensors == NULL && f.n_tensors == 0);
        return 0;
    }
    fuzz_ckpt_check(&f, data, size);
    ckpt_file_close(&f);
    return 0;
}
