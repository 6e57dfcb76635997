/* tokenizer_import.c - SentencePiece tokenizer.model and llama2.c tokenizer.bin readers.
 *
 * tokenizer.model is a serialised ModelProto (sentencepiece_model.proto), read here by hand from
 * the protobuf wire format so that the converter needs no protobuf library:
 *   ModelProto      1: repeated SentencePiece pieces, 2: TrainerSpec, 3: NormalizerSpec
 *   SentencePiece   1: piece (string), 2: score (float), 3: type (enum, default NORMAL = 1)
 *   TrainerSpec     3: model_type (BPE = 2, default UNIGRAM = 1), 24: treat_whitespace_as_suffix,
 *                   35: byte_fallback, 40: unk_id (0), 41: bos_id (1), 42: eos_id (2)
 *   NormalizerSpec  1: name, 2: precompiled_charsmap, 3: add_dummy_prefix (true),
 *                   4: remove_extra_whitespaces (true), 5: escape_whitespaces (true)
 * Every other field is skipped by its wire type. */
#include "tokenizer_import.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"

#define SPACE_SYMBOL "\xE2\x96\x81" /* U+2581 */
#define SPACE_SYMBOL_LEN 3

static uint32_t load_u32_le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static float load_f32_le(const uint8_t *p) {
    uint32_t bits = load_u32_le(p);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* ------------------------------------------------------------------------------------------------
 * protobuf wire format
 * ---------------------------------------------------------------------------------------------- */

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_LEN = 2, WIRE_FIXED32 = 5 };

typedef struct pb_reader {
    const uint8_t *data;     /* the whole file, so that offsets in messages are file offsets */
    size_t pos, end;         /* the unread part of this message */
    const char *message;     /* its name, for error messages */
} pb_reader;

typedef struct pb_field {
    uint32_t number;
    unsigned wire;
    size_t offset;           /* file offset of the field's key */
    uint64_t value;          /* WIRE_VARINT value; WIRE_FIXED32/64 raw bits */
    pb_reader sub;           /* WIRE_LEN payload */
} pb_field;

static lmoe_status pb_varint(pb_reader *r, uint64_t *out) {
    uint64_t value = 0;
    size_t start = r->pos;
    for (unsigned shift = 0;; shift += 7) {
        RETURN_ERROR_IF(r->pos >= r->end, LMOE_ERR_BAD_FILE,
                        "tokenizer.model: %s: varint at byte %zu runs past the end of the message",
                        r->message, start);
        uint8_t byte = r->data[r->pos++];
        /* the 10th byte holds bit 63 only */
        RETURN_ERROR_IF(shift == 63 && byte > 1, LMOE_ERR_BAD_FILE,
                        "tokenizer.model: %s: varint at byte %zu is longer than 64 bits",
                        r->message, start);
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) break;
    }
    *out = value;
    return LMOE_OK;
}

static lmoe_status pb_fixed(pb_reader *r, size_t n, const pb_field *f) {
    RETURN_ERROR_IF(r->end - r->pos < n, LMOE_ERR_BAD_FILE,
                    "tokenizer.model: %s field %u at byte %zu: %zu-byte value runs past the end",
                    r->message, f->number, f->offset, n);
    return LMOE_OK;
}

static lmoe_status pb_value(pb_reader *r, pb_field *f) {
    switch (f->wire) {
    case WIRE_VARINT: return pb_varint(r, &f->value);
    case WIRE_FIXED64:
        FORWARD_IF_ERROR(pb_fixed(r, 8, f));
        f->value = (uint64_t)load_u32_le(r->data + r->pos) |
                   (uint64_t)load_u32_le(r->data + r->pos + 4) << 32;
        r->pos += 8;
        return LMOE_OK;
    case WIRE_FIXED32:
        FORWARD_IF_ERROR(pb_fixed(r, 4, f));
        f->value = load_u32_le(r->data + r->pos);
        r->pos += 4;
        return LMOE_OK;
    case WIRE_LEN: {
        uint64_t len;
        FORWARD_IF_ERROR(pb_varint(r, &len));
        RETURN_ERROR_IF(len > r->end - r->pos, LMOE_ERR_BAD_FILE,
                        "tokenizer.model: %s field %u at byte %zu: length %llu runs past the end "
                        "(%zu bytes left)", r->message, f->number, f->offset,
                        (unsigned long long)len, r->end - r->pos);
        f->sub.data = r->data;
        f->sub.pos = r->pos;
        f->sub.end = r->pos + (size_t)len;
        r->pos += (size_t)len;
        return LMOE_OK;
    }
    default:
        return lmoe_error(LMOE_ERR_BAD_FILE,
                          "tokenizer.model: %s field %u at byte %zu: wire type %u is not supported",
                          r->message, f->number, f->offset, f->wire);
    }
}

/* Reads the next field of r; *more = false at the end of the message. */
static lmoe_status pb_next(pb_reader *r, pb_field *f, bool *more) {
    *more = r->pos < r->end;
    if (!*more) return LMOE_OK;
    uint64_t key;
    f->offset = r->pos;
    FORWARD_IF_ERROR(pb_varint(r, &key));
    RETURN_ERROR_IF(key >> 3 == 0 || key >> 3 > 0x1FFFFFFF, LMOE_ERR_BAD_FILE,
                    "tokenizer.model: %s at byte %zu: field number %llu is invalid", r->message,
                    f->offset, (unsigned long long)(key >> 3));
    f->number = (uint32_t)(key >> 3);
    f->wire = (unsigned)(key & 7);
    f->value = 0;
    memset(&f->sub, 0, sizeof f->sub);
    return pb_value(r, f);
}

static lmoe_status pb_expect_wire(const pb_reader *r, const pb_field *f, unsigned wire,
                                  const char *field_name) {
    RETURN_ERROR_IF(f->wire != wire, LMOE_ERR_BAD_FILE,
                    "tokenizer.model: %s.%s at byte %zu has wire type %u, expected %u", r->message,
                    field_name, f->offset, f->wire, wire);
    return LMOE_OK;
}

static pb_reader pb_sub(const pb_field *f, const char *message) {
    pb_reader r = f->sub;
    r.message = message;
    return r;
}

/* ------------------------------------------------------------------------------------------------
 * SentencePiece ModelProto
 * ---------------------------------------------------------------------------------------------- */

typedef struct spm_spec {
    uint64_t model_type;
    int32_t unk_id, bos_id, eos_id;
    bool byte_fallback, whitespace_as_suffix;
    bool add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces;
    const uint8_t *normalizer_name;
    size_t normalizer_name_len, charsmap_len;
    uint32_t n_pieces;
    size_t text_bytes;       /* upper bound of the piece text: the sum of the piece messages */
    bool has_trainer_spec;
} spm_spec;

/* An int32 field (a negative value is a sign-extended 64-bit varint): -1 .. INT32_MAX. */
static lmoe_status spm_id(const pb_reader *r, const pb_field *f, const char *name, int32_t *out) {
    FORWARD_IF_ERROR(pb_expect_wire(r, f, WIRE_VARINT, name));
    int64_t v = (int64_t)f->value;
    RETURN_ERROR_IF(v < -1 || v > INT32_MAX, LMOE_ERR_BAD_FILE,
                    "tokenizer.model: %s.%s at byte %zu: %lld is not a token id", r->message, name,
                    f->offset, (long long)v);
    *out = (int32_t)v;
    return LMOE_OK;
}

static lmoe_status spm_bool(const pb_reader *r, const pb_field *f, const char *name, bool *out) {
    FORWARD_IF_ERROR(pb_expect_wire(r, f, WIRE_VARINT, name));
    *out = f->value != 0;
    return LMOE_OK;
}

static lmoe_status spm_trainer_spec(pb_reader r, spm_spec *spec) {
    pb_field f;
    bool more;
    for (;;) {
        FORWARD_IF_ERROR(pb_next(&r, &f, &more));
        if (!more) return LMOE_OK;
        switch (f.number) {
        case 3:
            FORWARD_IF_ERROR(pb_expect_wire(&r, &f, WIRE_VARINT, "model_type"));
            spec->model_type = f.value;
            break;
        case 24: FORWARD_IF_ERROR(spm_bool(&r, &f, "treat_whitespace_as_suffix",
                                           &spec->whitespace_as_suffix)); break;
        case 35: FORWARD_IF_ERROR(spm_bool(&r, &f, "byte_fallback", &spec->byte_fallback)); break;
        case 40: FORWARD_IF_ERROR(spm_id(&r, &f, "unk_id", &spec->unk_id)); break;
        case 41: FORWARD_IF_ERROR(spm_id(&r, &f, "bos_id", &spec->bos_id)); break;
        case 42: FORWARD_IF_ERROR(spm_id(&r, &f, "eos_id", &spec->eos_id)); break;
        default: break;
        }
    }
}

static lmoe_status spm_normalizer_spec(pb_reader r, spm_spec *spec) {
    pb_field f;
    bool more;
    for (;;) {
        FORWARD_IF_ERROR(pb_next(&r, &f, &more));
        if (!more) return LMOE_OK;
        switch (f.number) {
        case 1:
            FORWARD_IF_ERROR(pb_expect_wire(&r, &f, WIRE_LEN, "name"));
            spec->normalizer_name = f.sub.data + f.sub.pos;
            spec->normalizer_name_len = f.sub.end - f.sub.pos;
            break;
        case 2:
            FORWARD_IF_ERROR(pb_expect_wire(&r, &f, WIRE_LEN, "precompiled_charsmap"));
            spec->charsmap_len = f.sub.end - f.sub.pos;
            break;
        case 3: FORWARD_IF_ERROR(spm_bool(&r, &f, "add_dummy_prefix", &spec->add_dummy_prefix)); break;
        case 4: FORWARD_IF_ERROR(spm_bool(&r, &f, "remove_extra_whitespaces",
                                          &spec->remove_extra_whitespaces)); break;
        case 5: FORWARD_IF_ERROR(spm_bool(&r, &f, "escape_whitespaces",
                                          &spec->escape_whitespaces)); break;
        default: break;
        }
    }
}

/* First pass over the ModelProto: counts the pieces and reads the two specs. */
static lmoe_status spm_scan(pb_reader r, spm_spec *spec) {
    pb_field f;
    bool more;
    for (;;) {
        FORWARD_IF_ERROR(pb_next(&r, &f, &more));
        if (!more) return LMOE_OK;
        if (f.number == 1) {
            FORWARD_IF_ERROR(pb_expect_wire(&r, &f, WIRE_LEN, "pieces"));
            RETURN_ERROR_IF(spec->n_pieces >= INT32_MAX, LMOE_ERR_BAD_FILE,
                            "tokenizer.model: more than 2^31-1 pieces");
            spec->n_pieces++;
            spec->text_bytes += f.sub.end - f.sub.pos;
        } else if (f.number == 2) {
            FORWARD_IF_ERROR(pb_expect_wire(&r, &f, WIRE_LEN, "trainer_spec"));
            FORWARD_IF_ERROR(spm_trainer_spec(pb_sub(&f, "TrainerSpec"), spec));
            spec->has_trainer_spec = true;
        } else if (f.number == 3) {
            FORWARD_IF_ERROR(pb_expect_wire(&r, &f, WIRE_LEN, "normalizer_spec"));
            FORWARD_IF_ERROR(spm_normalizer_spec(pb_sub(&f, "NormalizerSpec"), spec));
        }
    }
}

/* Refuses models whose tokenization this library does not implement. */
static lmoe_status spm_check_supported(const spm_spec *spec) {
    RETURN_ERROR_IF(spec->n_pieces == 0, LMOE_ERR_BAD_FILE, "tokenizer.model: no pieces");
    /* every real model has one; without it the model type would silently default to unigram */
    RETURN_ERROR_IF(!spec->has_trainer_spec, LMOE_ERR_BAD_FILE,
                    "tokenizer.model: no TrainerSpec (truncated file?)");
    RETURN_ERROR_IF(spec->model_type != 2, LMOE_ERR_UNSUPPORTED,
                    "tokenizer.model: TrainerSpec.model_type is %llu; only BPE (2) is supported",
                    (unsigned long long)spec->model_type);
    RETURN_ERROR_IF(spec->charsmap_len > 0, LMOE_ERR_UNSUPPORTED,
                    "tokenizer.model: normalizer '%.*s' has a character map; only 'identity' "
                    "normalisation is supported", (int)spec->normalizer_name_len,
                    spec->normalizer_name ? (const char *)spec->normalizer_name : "");
    RETURN_ERROR_IF(!spec->escape_whitespaces || spec->whitespace_as_suffix, LMOE_ERR_UNSUPPORTED,
                    "tokenizer.model: escape_whitespaces = false or treat_whitespace_as_suffix = "
                    "true is not supported");
    return LMOE_OK;
}

static lmoe_status spm_piece(pb_reader r, uint32_t index, lmoe_vocab *out, size_t *storage_used) {
    pb_field f;
    bool more;
    out->types[index] = VOCAB_TYPE_NORMAL;
    /* a piece message without its text (field 1) is an empty piece, but its text pointer is
     * valid like every other's: the decoder forms text + offset for it (fuzz_spm found NULL + 0) */
    out->pieces[index].text = out->storage + *storage_used;
    for (;;) {
        FORWARD_IF_ERROR(pb_next(&r, &f, &more));
        if (!more) return LMOE_OK;
        if (f.number == 1) {
            FORWARD_IF_ERROR(pb_expect_wire(&r, &f, WIRE_LEN, "piece"));
            size_t len = f.sub.end - f.sub.pos; /* fits: the message is inside text_bytes */
            memcpy(out->storage + *storage_used, f.sub.data + f.sub.pos, len);
            out->pieces[index].text = out->storage + *storage_used;
            out->pieces[index].len = (uint32_t)len;
            *storage_used += len;
        } else if (f.number == 2) {
            FORWARD_IF_ERROR(pb_expect_wire(&r, &f, WIRE_FIXED32, "score"));
            uint32_t bits = (uint32_t)f.value;
            memcpy(&out->scores[index], &bits, sizeof bits);
        } else if (f.number == 3) {
            FORWARD_IF_ERROR(pb_expect_wire(&r, &f, WIRE_VARINT, "type"));
            RETURN_ERROR_IF(f.value < VOCAB_TYPE_NORMAL || f.value > VOCAB_TYPE_BYTE,
                            LMOE_ERR_BAD_FILE,
                            "tokenizer.model: pieces[%u].type at byte %zu: %llu is not a "
                            "SentencePiece type (1..6)", index, f.offset,
                            (unsigned long long)f.value);
            out->types[index] = (int32_t)f.value;
        }
    }
}

/* Second pass: the pieces, copied into out->storage. */
static lmoe_status spm_pieces(pb_reader r, lmoe_vocab *out, uint32_t *n_byte_pieces) {
    pb_field f;
    bool more;
    uint32_t index = 0;
    size_t storage_used = 0;
    *n_byte_pieces = 0;
    for (;;) {
        FORWARD_IF_ERROR(pb_next(&r, &f, &more));
        if (!more) return LMOE_OK;
        if (f.number != 1) continue;
        FORWARD_IF_ERROR(spm_piece(pb_sub(&f, "SentencePiece"), index, out, &storage_used));
        if (out->types[index] == VOCAB_TYPE_BYTE) (*n_byte_pieces)++;
        index++;
    }
}

static lmoe_status spm_read(const void *data, size_t size, lmoe_vocab *out) {
    pb_reader r = {data, 0, size, "ModelProto"};
    /* the proto's defaults */
    spm_spec spec = {.model_type = 1, .unk_id = 0, .bos_id = 1, .eos_id = 2,
                     .add_dummy_prefix = true, .remove_extra_whitespaces = true,
                     .escape_whitespaces = true};
    FORWARD_IF_ERROR(spm_scan(r, &spec));
    FORWARD_IF_ERROR(spm_check_supported(&spec));
    FORWARD_IF_ERROR(vocab_alloc(out, spec.n_pieces, spec.text_bytes));
    uint32_t n_byte_pieces;
    FORWARD_IF_ERROR(spm_pieces(r, out, &n_byte_pieces));
    /* SentencePiece refuses such a model: its byte pieces would never be used */
    RETURN_ERROR_IF(n_byte_pieces > 0 && !spec.byte_fallback, LMOE_ERR_BAD_FILE,
                    "tokenizer.model: %u byte pieces are present but TrainerSpec.byte_fallback is "
                    "false", n_byte_pieces);
    out->unk_id = spec.unk_id;
    out->bos_id = spec.bos_id;
    out->eos_id = spec.eos_id;
    out->add_bos = true;
    out->add_space_prefix = spec.add_dummy_prefix;
    out->remove_extra_whitespaces = spec.remove_extra_whitespaces;
    out->stop_on_bos = false;
    return lmoe_error_prefix(vocab_finish(out), "tokenizer.model");
}

lmoe_status spm_model_read(const void *data, size_t size, lmoe_vocab *out) {
    RETURN_ERROR_IF(!out || (!data && size > 0), LMOE_ERR_INVALID_ARGUMENT,
                    "spm_model_read: NULL argument");
    memset(out, 0, sizeof *out);
    lmoe_status st = spm_read(data, size, out);
    if (st != LMOE_OK) vocab_free(out);
    return st;
}

/* ------------------------------------------------------------------------------------------------
 * llama2.c tokenizer.bin
 * ---------------------------------------------------------------------------------------------- */

typedef struct bin_entry {
    float score;
    const uint8_t *text;
    uint32_t len;
} bin_entry;

/* Reads entry index at *pos: float score, int32 len, len bytes. */
static lmoe_status bin_entry_read(const uint8_t *data, size_t size, size_t *pos, uint32_t index,
                                  bin_entry *e) {
    RETURN_ERROR_IF(size - *pos < 8, LMOE_ERR_BAD_FILE,
                    "tokenizer.bin: entry %u at byte %zu: file ends inside the score/length", index,
                    *pos);
    e->score = load_f32_le(data + *pos);
    int32_t len = (int32_t)load_u32_le(data + *pos + 4);
    RETURN_ERROR_IF(len < 0 || (size_t)len > size - *pos - 8, LMOE_ERR_BAD_FILE,
                    "tokenizer.bin: entry %u at byte %zu: length %d runs past the end of the file "
                    "(%zu bytes left)", index, *pos, len, size - *pos - 8);
    e->text = data + *pos + 8;
    e->len = (uint32_t)len;
    *pos += 8 + (size_t)len;
    return LMOE_OK;
}

static bool bin_is(const bin_entry *e, const char *text) {
    size_t n = strlen(text);
    return e->len == n && memcmp(e->text, text, n) == 0;
}

static bool is_hex(uint8_t c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f');
}

static bool bin_is_byte_piece(const bin_entry *e) {
    return e->len == 6 && memcmp(e->text, "<0x", 3) == 0 && is_hex(e->text[3]) &&
           is_hex(e->text[4]) && e->text[5] == '>';
}

/* Bytes of the piece once its spaces are written as U+2581 (3 bytes each). */
static size_t bin_converted_len(const bin_entry *e) {
    size_t n = e->len;
    for (uint32_t i = 0; i < e->len; i++)
        if (e->text[i] == ' ') n += SPACE_SYMBOL_LEN - 1;
    return n;
}

/* Stores entry id into out: type, special ids and the SentencePiece text of the piece. */
static void bin_convert(const bin_entry *e, uint32_t id, lmoe_vocab *out, size_t *storage_used) {
    char *dst = out->storage + *storage_used;
    size_t n = 0;
    out->scores[id] = e->score;
    out->types[id] = VOCAB_TYPE_NORMAL;
    if (bin_is(e, "\n<s>\n") || bin_is(e, "\n</s>\n")) {
        bool bos = e->len == 5;
        n = bos ? 3 : 4;
        memcpy(dst, bos ? "<s>" : "</s>", n);
        out->types[id] = VOCAB_TYPE_CONTROL;
        if (bos && out->bos_id < 0) out->bos_id = (int32_t)id;
        if (!bos && out->eos_id < 0) out->eos_id = (int32_t)id;
    } else {
        if (bin_is(e, "<unk>")) {
            out->types[id] = VOCAB_TYPE_UNKNOWN;
            if (out->unk_id < 0) out->unk_id = (int32_t)id;
        } else if (bin_is_byte_piece(e)) {
            out->types[id] = VOCAB_TYPE_BYTE;
        }
        for (uint32_t i = 0; i < e->len; i++) {
            if (e->text[i] == ' ') {
                memcpy(dst + n, SPACE_SYMBOL, SPACE_SYMBOL_LEN);
                n += SPACE_SYMBOL_LEN;
            } else {
                dst[n++] = (char)e->text[i];
            }
        }
    }
    out->pieces[id].text = dst;
    out->pieces[id].len = (uint32_t)n;
    *storage_used += n;
}

static lmoe_status bin_read(const uint8_t *data, size_t size, uint32_t n_vocab, lmoe_vocab *out) {
    RETURN_ERROR_IF(size < 4, LMOE_ERR_BAD_FILE,
                    "tokenizer.bin: %zu bytes, too short for the max_token_length header", size);
    int32_t max_token_length = (int32_t)load_u32_le(data);
    RETURN_ERROR_IF(max_token_length < 0, LMOE_ERR_BAD_FILE,
                    "tokenizer.bin: max_token_length is %d", max_token_length);
    /* pass 1: bounds and the storage size */
    size_t pos = 4, storage_size = 0;
    bin_entry e;
    for (uint32_t id = 0; id < n_vocab; id++) {
        FORWARD_IF_ERROR(bin_entry_read(data, size, &pos, id, &e));
        storage_size += bin_converted_len(&e); /* at most 3 * size: cannot wrap on 64-bit */
    }
    RETURN_ERROR_IF(pos != size, LMOE_ERR_BAD_FILE,
                    "tokenizer.bin: %zu bytes after the %u entries the model expects (wrong "
                    "vocabulary size?)", size - pos, n_vocab);
    /* pass 2: convert */
    FORWARD_IF_ERROR(vocab_alloc(out, n_vocab, storage_size));
    out->bos_id = out->eos_id = out->unk_id = -1;
    pos = 4;
    size_t storage_used = 0;
    for (uint32_t id = 0; id < n_vocab; id++) {
        FORWARD_IF_ERROR(bin_entry_read(data, size, &pos, id, &e));
        bin_convert(&e, id, out, &storage_used);
    }
    out->add_bos = true;
    out->add_space_prefix = true;
    out->remove_extra_whitespaces = false;
    out->stop_on_bos = true;
    return lmoe_error_prefix(vocab_finish(out), "tokenizer.bin");
}

lmoe_status llama2c_tokenizer_read(const void *data, size_t size, uint32_t n_vocab,
                                   lmoe_vocab *out) {
    RETURN_ERROR_IF(!out || (!data && size > 0), LMOE_ERR_INVALID_ARGUMENT,
                    "llama2c_tokenizer_read: NULL argument");
    memset(out, 0, sizeof *out);
    RETURN_ERROR_IF(n_vocab < 1 || n_vocab > INT32_MAX, LMOE_ERR_INVALID_ARGUMENT,
                    "llama2c_tokenizer_read: n_vocab %u is not 1 .. 2^31-1", n_vocab);
    lmoe_status st = bin_read(data, size, n_vocab, out);
    if (st != LMOE_OK) vocab_free(out);
    return st;
}
