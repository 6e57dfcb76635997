/* simple.c - load a model, generate text from a prompt, free everything.
 *
 *   simple MODEL.gguf "Once upon a time"
 */
#include <stdio.h>
#include <string.h>

#include "llamamoe.h"

static int print_text(void *user, const char *text, size_t len, lmoe_token token) {
    (void)user;
    (void)token;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0; /* nonzero would stop generation */
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT\n", argv[0]);
        return 2;
    }
    lmoe_model *model = NULL;
    lmoe_context *ctx = NULL;
    lmoe_sampler *sampler = NULL;

    lmoe_status st = lmoe_model_load(argv[1], NULL, &model); /* NULL params: defaults */
    if (st == LMOE_OK) st = lmoe_context_create(model, NULL, &ctx);
    lmoe_sampler_params sp;
    lmoe_sampler_default_params(&sp, sizeof sp);
    sp.temperature = 0; /* greedy: the same text every run */
    if (st == LMOE_OK) st = lmoe_sampler_create(&sp, &sampler);

    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.max_tokens = 100;
    gp.on_text = print_text;
    if (st == LMOE_OK) {
        fputs(argv[2], stdout);
        st = lmoe_generate(ctx, sampler, argv[2], strlen(argv[2]), &gp, NULL, 0);
        putchar('\n');
    }
    if (st != LMOE_OK) fprintf(stderr, "error: %s\n", lmoe_last_error());

    lmoe_sampler_free(sampler); /* each free accepts NULL */
    lmoe_context_free(ctx);
    lmoe_model_free(model);
    return st == LMOE_OK ? 0 : 1;
}
