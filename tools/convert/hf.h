/* hf.h - Hugging Face checkpoint folders (config.json, tokenizer.model, safetensors or PyTorch
 * shards) to GGUF: LLaMA-MoE v1 (model_type llama_moe), dense LLaMA (llama) and Mixtral-style MoE
 * (mixtral, including LLaMA-MoE v2's scale_factor). */
#ifndef LMOE_HF_H
#define LMOE_HF_H

#include <stdbool.h>

#include "gguf.h"
#include "llamamoe.h"

typedef struct hf_options {
    bool type_set;           /* false: matrices keep the checkpoint's type */
    ggml_type type;          /* f32, f16 or bf16 for the weight matrices (norms, gates: f32) */
    const char *chat_format; /* NULL: "vicuna" if the model name says sft, else none;
                                "none" or "vicuna" to choose */
    /* Progress lines (no newline) for stderr; optional. */
    void (*progress)(void *user, const char *line);
    void *user;
} hf_options;

/* Converts the checkpoint folder dir into one GGUF file at out_path. Errors name the file, the
 * tensor or the config key, and nothing is left at out_path on failure. */
lmoe_status hf_convert(const char *dir, const char *out_path, const hf_options *options);

#endif
