//! Raw FFI declarations of libllamamoe, written by hand to mirror `include/llamamoe.h` exactly
//! (version 0.1.0). Every `#[repr(C)]` struct has the header's fields in the header's order,
//! starting with `struct_size`; C enums are plain `c_int` aliases with constants (a Rust enum
//! would be undefined behaviour for a value a newer library might return). See the header for
//! the documentation of each function; the safe API is the `llamamoe` crate.
//!
//! Linking: see `build.rs` (LLAMAMOE_LIB_DIR, else pkg-config, else the system paths).

#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_float, c_int, c_void};

// ---- Version --------------------------------------------------------------------------------

pub const LMOE_VERSION_MAJOR: c_int = 0;
pub const LMOE_VERSION_MINOR: c_int = 1;
pub const LMOE_VERSION_PATCH: c_int = 0;
pub const LMOE_VERSION_NUMBER: c_int =
    LMOE_VERSION_MAJOR * 1000000 + LMOE_VERSION_MINOR * 1000 + LMOE_VERSION_PATCH;
pub const LMOE_VERSION_STRING: &str = "0.1.0";

// ---- Status codes ---------------------------------------------------------------------------

pub type lmoe_status = c_int;
pub const LMOE_OK: lmoe_status = 0;
pub const LMOE_ERR_INVALID_ARGUMENT: lmoe_status = 1;
pub const LMOE_ERR_IO: lmoe_status = 2;
pub const LMOE_ERR_BAD_FILE: lmoe_status = 3;
pub const LMOE_ERR_UNSUPPORTED: lmoe_status = 4;
pub const LMOE_ERR_OUT_OF_MEMORY: lmoe_status = 5;
pub const LMOE_ERR_CONTEXT_FULL: lmoe_status = 6;
pub const LMOE_ERR_BUFFER_TOO_SMALL: lmoe_status = 7;
pub const LMOE_ERR_MISUSE: lmoe_status = 8;
pub const LMOE_ERR_ABORTED: lmoe_status = 9;
pub const LMOE_ERR_INTERNAL: lmoe_status = 10;

// ---- Logging --------------------------------------------------------------------------------

pub type lmoe_log_level = c_int;
pub const LMOE_LOG_ERROR: lmoe_log_level = 0;
pub const LMOE_LOG_WARN: lmoe_log_level = 1;
pub const LMOE_LOG_INFO: lmoe_log_level = 2;
pub const LMOE_LOG_DEBUG: lmoe_log_level = 3;

pub type lmoe_log_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, level: lmoe_log_level, message: *const c_char)>;

// ---- Model ----------------------------------------------------------------------------------

pub type lmoe_token = i32;

/// Opaque `lmoe_model`.
#[repr(C)]
pub struct lmoe_model {
    _private: [u8; 0],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lmoe_model_params {
    pub struct_size: usize,
    pub log_fn: lmoe_log_fn,
    pub log_user: *mut c_void,
    pub log_level: lmoe_log_level,
    pub vocab_only: c_int,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lmoe_model_info {
    pub struct_size: usize,
    pub architecture: [c_char; 32],
    pub name: [c_char; 64],
    pub has_weights: c_int,
    pub n_vocab: i32,
    pub n_ctx_train: i32,
    pub n_embd: i32,
    pub n_layer: i32,
    pub n_head: i32,
    pub n_head_kv: i32,
    pub n_ff: i32,
    pub n_expert: i32,
    pub n_expert_used: i32,
    pub rms_norm_eps: c_float,
    pub rope_freq_base: c_float,
    pub n_params: u64,
    pub n_params_active: u64,
    pub n_bytes: u64,
}

// ---- Context --------------------------------------------------------------------------------

/// Opaque `lmoe_context`.
#[repr(C)]
pub struct lmoe_context {
    _private: [u8; 0],
}

pub type lmoe_abort_fn = Option<unsafe extern "C" fn(user: *mut c_void) -> c_int>;

pub type lmoe_routing_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        layer: i32,
        pos: u32,
        experts: *const i32,
        weights: *const c_float,
        n_used: i32,
    ),
>;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lmoe_context_params {
    pub struct_size: usize,
    pub n_ctx: u32,
    pub n_threads: i32,
    pub log_fn: lmoe_log_fn,
    pub log_user: *mut c_void,
    pub log_level: lmoe_log_level,
    pub abort_fn: lmoe_abort_fn,
    pub abort_user: *mut c_void,
    pub routing_fn: lmoe_routing_fn,
    pub routing_user: *mut c_void,
    pub n_batch: u32,
}

// ---- Sampler --------------------------------------------------------------------------------

/// Opaque `lmoe_sampler`.
#[repr(C)]
pub struct lmoe_sampler {
    _private: [u8; 0],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lmoe_sampler_params {
    pub struct_size: usize,
    pub temperature: c_float,
    pub top_k: i32,
    pub top_p: c_float,
    pub min_p: c_float,
    pub repeat_penalty: c_float,
    pub repeat_last_n: i32,
    pub seed: u64,
}

// ---- Generation -----------------------------------------------------------------------------

pub type lmoe_stop_reason = c_int;
pub const LMOE_STOP_NONE: lmoe_stop_reason = 0;
pub const LMOE_STOP_EOS: lmoe_stop_reason = 1;
pub const LMOE_STOP_BOS: lmoe_stop_reason = 2;
pub const LMOE_STOP_STRING: lmoe_stop_reason = 3;
pub const LMOE_STOP_MAX_TOKENS: lmoe_stop_reason = 4;
pub const LMOE_STOP_CALLBACK: lmoe_stop_reason = 5;

pub type lmoe_text_fn = Option<
    unsafe extern "C" fn(user: *mut c_void, text: *const c_char, len: usize, token: lmoe_token) -> c_int,
>;

pub type lmoe_token_fn = Option<unsafe extern "C" fn(user: *mut c_void, token: lmoe_token) -> c_int>;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lmoe_generate_params {
    pub struct_size: usize,
    pub max_tokens: i32,
    pub add_bos: c_int,
    pub stop_strings: *const *const c_char,
    pub n_stop_strings: usize,
    pub on_text: lmoe_text_fn,
    pub on_token: lmoe_token_fn,
    pub user: *mut c_void,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lmoe_generate_result {
    pub struct_size: usize,
    pub stop_reason: lmoe_stop_reason,
    pub n_prompt_tokens: u32,
    pub n_generated: u32,
    pub prompt_ms: f64,
    pub generate_ms: f64,
}

// ---- Functions ------------------------------------------------------------------------------

extern "C" {
    pub fn lmoe_version() -> *const c_char;
    pub fn lmoe_version_number() -> c_int;

    pub fn lmoe_status_string(status: lmoe_status) -> *const c_char;
    pub fn lmoe_last_error() -> *const c_char;

    pub fn lmoe_model_default_params(params: *mut lmoe_model_params, params_size: usize) -> lmoe_status;
    pub fn lmoe_model_load(
        path: *const c_char,
        params: *const lmoe_model_params,
        out: *mut *mut lmoe_model,
    ) -> lmoe_status;
    pub fn lmoe_model_load_from_fd(
        fd: c_int,
        params: *const lmoe_model_params,
        out: *mut *mut lmoe_model,
    ) -> lmoe_status;
    pub fn lmoe_model_load_from_memory(
        data: *const c_void,
        size: usize,
        params: *const lmoe_model_params,
        out: *mut *mut lmoe_model,
    ) -> lmoe_status;
    pub fn lmoe_model_free(model: *mut lmoe_model);
    pub fn lmoe_model_get_info(
        model: *const lmoe_model,
        info: *mut lmoe_model_info,
        info_size: usize,
    ) -> lmoe_status;
    pub fn lmoe_model_meta_string(
        model: *const lmoe_model,
        key: *const c_char,
        buf: *mut c_char,
        buf_size: usize,
        len: *mut usize,
    ) -> lmoe_status;

    pub fn lmoe_token_bos(model: *const lmoe_model) -> lmoe_token;
    pub fn lmoe_token_eos(model: *const lmoe_model) -> lmoe_token;
    pub fn lmoe_tokenize(
        model: *const lmoe_model,
        text: *const c_char,
        text_len: usize,
        add_bos: c_int,
        tokens: *mut lmoe_token,
        max_tokens: usize,
        n_tokens: *mut usize,
    ) -> lmoe_status;
    pub fn lmoe_detokenize(
        model: *const lmoe_model,
        tokens: *const lmoe_token,
        n_tokens: usize,
        buf: *mut c_char,
        buf_size: usize,
        len: *mut usize,
    ) -> lmoe_status;
    pub fn lmoe_token_to_piece(
        model: *const lmoe_model,
        token: lmoe_token,
        strip_leading_space: c_int,
        buf: *mut c_char,
        buf_size: usize,
        len: *mut usize,
    ) -> lmoe_status;

    pub fn lmoe_context_default_params(params: *mut lmoe_context_params, params_size: usize)
        -> lmoe_status;
    pub fn lmoe_context_create(
        model: *const lmoe_model,
        params: *const lmoe_context_params,
        out: *mut *mut lmoe_context,
    ) -> lmoe_status;
    pub fn lmoe_context_free(ctx: *mut lmoe_context);
    pub fn lmoe_context_reset(ctx: *mut lmoe_context);
    pub fn lmoe_context_truncate(ctx: *mut lmoe_context, n_tokens: u32) -> lmoe_status;
    pub fn lmoe_context_n_tokens(ctx: *const lmoe_context) -> u32;
    pub fn lmoe_context_n_ctx(ctx: *const lmoe_context) -> u32;
    pub fn lmoe_context_expert_counts(
        ctx: *const lmoe_context,
        counts: *mut u64,
        n_counts: usize,
    ) -> lmoe_status;
    pub fn lmoe_context_reset_expert_counts(ctx: *mut lmoe_context);
    pub fn lmoe_context_model(ctx: *const lmoe_context) -> *const lmoe_model;
    pub fn lmoe_eval(ctx: *mut lmoe_context, tokens: *const lmoe_token, n_tokens: usize) -> lmoe_status;
    pub fn lmoe_logits(ctx: *const lmoe_context) -> *const c_float;

    pub fn lmoe_sampler_default_params(params: *mut lmoe_sampler_params, params_size: usize)
        -> lmoe_status;
    pub fn lmoe_sampler_create(params: *const lmoe_sampler_params, out: *mut *mut lmoe_sampler)
        -> lmoe_status;
    pub fn lmoe_sampler_free(sampler: *mut lmoe_sampler);
    pub fn lmoe_sampler_reset(sampler: *mut lmoe_sampler);
    pub fn lmoe_sampler_sample(
        sampler: *mut lmoe_sampler,
        logits: *const c_float,
        n_vocab: i32,
        token: *mut lmoe_token,
    ) -> lmoe_status;
    pub fn lmoe_sampler_accept(sampler: *mut lmoe_sampler, token: lmoe_token);

    pub fn lmoe_generate_default_params(params: *mut lmoe_generate_params, params_size: usize)
        -> lmoe_status;
    pub fn lmoe_generate(
        ctx: *mut lmoe_context,
        sampler: *mut lmoe_sampler,
        prompt: *const c_char,
        prompt_len: usize,
        params: *const lmoe_generate_params,
        result: *mut lmoe_generate_result,
        result_size: usize,
    ) -> lmoe_status;
}

/// Layout checks against sizes and offsets computed by hand from the header for LP64 targets
/// (x86-64 and aarch64 Linux/macOS: 8-byte size_t, pointers, uint64_t and double; 4-byte int,
/// enums, int32_t and float), and confirmed with `sizeof`/`offsetof` from a C compiler.
#[cfg(all(test, target_pointer_width = "64", not(windows)))]
mod layout {
    use super::*;
    use std::mem::{align_of, size_of, MaybeUninit};

    macro_rules! offset {
        ($t:ty, $f:ident) => {{
            let u = MaybeUninit::<$t>::uninit();
            let base = u.as_ptr();
            // addr_of! takes the field's address without reading or referencing it
            let field = unsafe { std::ptr::addr_of!((*base).$f) };
            field as usize - base as usize
        }};
    }

    #[test]
    fn model_params() {
        assert_eq!(size_of::<lmoe_model_params>(), 32);
        assert_eq!(align_of::<lmoe_model_params>(), 8);
        assert_eq!(offset!(lmoe_model_params, log_fn), 8);
        assert_eq!(offset!(lmoe_model_params, log_user), 16);
        assert_eq!(offset!(lmoe_model_params, log_level), 24);
        assert_eq!(offset!(lmoe_model_params, vocab_only), 28);
    }

    #[test]
    fn model_info() {
        assert_eq!(size_of::<lmoe_model_info>(), 176);
        assert_eq!(offset!(lmoe_model_info, architecture), 8);
        assert_eq!(offset!(lmoe_model_info, name), 40);
        assert_eq!(offset!(lmoe_model_info, has_weights), 104);
        assert_eq!(offset!(lmoe_model_info, n_expert_used), 140);
        assert_eq!(offset!(lmoe_model_info, rms_norm_eps), 144);
        assert_eq!(offset!(lmoe_model_info, n_params), 152);
        assert_eq!(offset!(lmoe_model_info, n_bytes), 168);
    }

    #[test]
    fn context_params() {
        assert_eq!(size_of::<lmoe_context_params>(), 80);
        assert_eq!(offset!(lmoe_context_params, n_ctx), 8);
        assert_eq!(offset!(lmoe_context_params, n_threads), 12);
        assert_eq!(offset!(lmoe_context_params, log_fn), 16);
        assert_eq!(offset!(lmoe_context_params, log_level), 32);
        assert_eq!(offset!(lmoe_context_params, abort_fn), 40);
        assert_eq!(offset!(lmoe_context_params, routing_fn), 56);
        assert_eq!(offset!(lmoe_context_params, routing_user), 64);
        assert_eq!(offset!(lmoe_context_params, n_batch), 72);
    }

    #[test]
    fn sampler_params() {
        assert_eq!(size_of::<lmoe_sampler_params>(), 40);
        assert_eq!(offset!(lmoe_sampler_params, temperature), 8);
        assert_eq!(offset!(lmoe_sampler_params, repeat_last_n), 28);
        assert_eq!(offset!(lmoe_sampler_params, seed), 32);
    }

    #[test]
    fn generate_params_and_result() {
        assert_eq!(size_of::<lmoe_generate_params>(), 56);
        assert_eq!(offset!(lmoe_generate_params, add_bos), 12);
        assert_eq!(offset!(lmoe_generate_params, stop_strings), 16);
        assert_eq!(offset!(lmoe_generate_params, on_text), 32);
        assert_eq!(offset!(lmoe_generate_params, user), 48);
        assert_eq!(size_of::<lmoe_generate_result>(), 40);
        assert_eq!(offset!(lmoe_generate_result, n_generated), 16);
        assert_eq!(offset!(lmoe_generate_result, prompt_ms), 24);
        assert_eq!(offset!(lmoe_generate_result, generate_ms), 32);
    }

    #[test]
    fn library_agrees() {
        // the library writes struct_size = the bytes it filled in; defaults take our sizes
        unsafe {
            let mut p = MaybeUninit::<lmoe_context_params>::zeroed();
            assert_eq!(lmoe_context_default_params(p.as_mut_ptr(), size_of::<lmoe_context_params>()), LMOE_OK);
            assert_eq!(p.assume_init().struct_size, size_of::<lmoe_context_params>());
            assert_eq!(lmoe_version_number(), LMOE_VERSION_NUMBER);
        }
    }
}
