//! Safe Rust API of libllamamoe: LLaMA and mixture-of-experts LLaMA inference on CPUs.
//!
//! ```no_run
//! use llamamoe::{Context, ContextParams, GenerateParams, Model};
//!
//! let model = Model::load("stories260K.gguf")?;
//! let mut ctx = Context::new(&model, ContextParams::default())?;
//! let mut params = GenerateParams::default();
//! params.max_tokens = 64;
//! params.sampler.temperature = 0.0;
//! println!("{}", ctx.generate("Once upon a time", &params)?);
//! # Ok::<(), llamamoe::Error>(())
//! ```
//!
//! # Ownership and threads
//!
//! The library's threading rule is "a loaded model is immutable and may be shared by any number
//! of contexts on any threads; a context and a sampler are used by one thread at a time". Here:
//!
//! * [`Model`] is `Send + Sync`: share `&Model` (or an `Arc<Model>`) between threads freely.
//! * [`Context`] borrows its model (`Context<'m>`), so the borrow checker guarantees the model
//!   outlives every context created from it. A context is `Send` but not `Sync`: it may move to
//!   another thread, but only one thread uses it at a time; every method that changes it takes
//!   `&mut self`, and [`Context::logits`] borrows it, so logits cannot outlive the next `eval`.
//! * [`Sampler`] is `Send` but not `Sync`, like a context.
//!
//! ```compile_fail,E0277
//! fn needs_sync<T: Sync>() {}
//! needs_sync::<llamamoe::Context<'static>>(); // a context is not Sync
//! ```
//!
//! ```compile_fail,E0505
//! # use llamamoe::{Context, ContextParams, Model};
//! let model = Model::load("m.gguf").unwrap();
//! let ctx = Context::new(&model, ContextParams::default()).unwrap();
//! drop(model); // error: the context still borrows the model
//! drop(ctx);
//! ```
//!
//! # Errors
//!
//! Every fallible call returns [`Error`]: the library's status code and the detail text of
//! `lmoe_last_error()`, read immediately after the failing call on the same thread (the library
//! keeps that text per thread).
//!
//! # Linking
//!
//! `llamamoe-sys` links the shared library found through `LLAMAMOE_LIB_DIR`, else
//! `pkg-config`, else the system linker paths; at run time the dynamic loader must find it too.

use std::ffi::{CStr, CString};
use std::fmt;
use std::mem::{size_of, MaybeUninit};
use std::os::raw::{c_char, c_int, c_void};
use std::path::Path;
use std::ptr::{self, NonNull};

pub use llamamoe_sys as sys;

/// A token id.
pub type Token = i32;

// ---- Errors ---------------------------------------------------------------------------------

/// The library's status codes (`lmoe_status`), with [`Status::Other`] for codes added later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    InvalidArgument,
    Io,
    BadFile,
    Unsupported,
    OutOfMemory,
    ContextFull,
    BufferTooSmall,
    Misuse,
    Aborted,
    Internal,
    /// A code this crate does not know (0 never appears in an [`Error`]).
    Other(i32),
}

impl Status {
    /// From the C value.
    pub fn from_code(code: i32) -> Status {
        match code {
            sys::LMOE_ERR_INVALID_ARGUMENT => Status::InvalidArgument,
            sys::LMOE_ERR_IO => Status::Io,
            sys::LMOE_ERR_BAD_FILE => Status::BadFile,
            sys::LMOE_ERR_UNSUPPORTED => Status::Unsupported,
            sys::LMOE_ERR_OUT_OF_MEMORY => Status::OutOfMemory,
            sys::LMOE_ERR_CONTEXT_FULL => Status::ContextFull,
            sys::LMOE_ERR_BUFFER_TOO_SMALL => Status::BufferTooSmall,
            sys::LMOE_ERR_MISUSE => Status::Misuse,
            sys::LMOE_ERR_ABORTED => Status::Aborted,
            sys::LMOE_ERR_INTERNAL => Status::Internal,
            other => Status::Other(other),
        }
    }

    /// The C value (`LMOE_ERR_*`).
    pub fn code(self) -> i32 {
        match self {
            Status::InvalidArgument => sys::LMOE_ERR_INVALID_ARGUMENT,
            Status::Io => sys::LMOE_ERR_IO,
            Status::BadFile => sys::LMOE_ERR_BAD_FILE,
            Status::Unsupported => sys::LMOE_ERR_UNSUPPORTED,
            Status::OutOfMemory => sys::LMOE_ERR_OUT_OF_MEMORY,
            Status::ContextFull => sys::LMOE_ERR_CONTEXT_FULL,
            Status::BufferTooSmall => sys::LMOE_ERR_BUFFER_TOO_SMALL,
            Status::Misuse => sys::LMOE_ERR_MISUSE,
            Status::Aborted => sys::LMOE_ERR_ABORTED,
            Status::Internal => sys::LMOE_ERR_INTERNAL,
            Status::Other(c) => c,
        }
    }

    /// The library's fixed English description (`lmoe_status_string`).
    pub fn description(self) -> String {
        unsafe { cstr_lossy(sys::lmoe_status_string(self.code())) }
    }
}

/// A failed library call: its status and the detail text of `lmoe_last_error()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    status: Status,
    message: String,
}

impl Error {
    /// Builds an error from a status code and the calling thread's `lmoe_last_error()`. Call it
    /// right after the failing library call, on the same thread.
    fn last(code: c_int) -> Error {
        let message = unsafe { cstr_lossy(sys::lmoe_last_error()) };
        Error { status: Status::from_code(code), message }
    }

    /// An error detected on the Rust side, before calling the library.
    fn new(status: Status, message: impl Into<String>) -> Error {
        Error { status, message: message.into() }
    }

    /// The status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The status as the C code (`LMOE_ERR_*`, never 0).
    pub fn code(&self) -> i32 {
        self.status.code()
    }

    /// The detail: which file, field or value, and what was expected.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{} (status {})", self.status.description(), self.code())
        } else {
            write!(f, "{} (status {})", self.message, self.code())
        }
    }
}

impl std::error::Error for Error {}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Calls `fill(buffer, &mut count)` with a buffer grown to the count the library asks for, until
/// it no longer answers "buffer too small"; returns the `count` elements it wrote.
fn grow_and_fill<T: Copy + Default>(
    initial: usize,
    mut fill: impl FnMut(&mut [T], &mut usize) -> c_int,
) -> Result<Vec<T>> {
    let mut buf = vec![T::default(); initial.max(1)];
    loop {
        let mut n = 0usize;
        let st = fill(&mut buf, &mut n);
        if st == sys::LMOE_ERR_BUFFER_TOO_SMALL && n > buf.len() {
            buf.resize(n, T::default());
            continue;
        }
        check(st)?;
        buf.truncate(n);
        return Ok(buf);
    }
}

fn check(code: c_int) -> Result<()> {
    if code == sys::LMOE_OK {
        Ok(())
    } else {
        Err(Error::last(code))
    }
}

unsafe fn cstr_lossy(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

fn chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn c_string(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::new(Status::InvalidArgument, format!("{} contains a NUL byte", what)))
}

/// The library's version, "MAJOR.MINOR.PATCH".
pub fn version() -> String {
    unsafe { cstr_lossy(sys::lmoe_version()) }
}

/// The library's version number (MAJOR * 1000000 + MINOR * 1000 + PATCH).
pub fn version_number() -> i32 {
    unsafe { sys::lmoe_version_number() }
}

// ---- Model ----------------------------------------------------------------------------------

/// Options of [`Model::load_with`].
#[derive(Debug, Clone, Default)]
pub struct ModelParams {
    /// Load only the tokenizer, even if the file has weights.
    pub vocab_only: bool,
}

/// What [`Model::info`] reports (`lmoe_model_info`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub architecture: String,
    pub name: String,
    pub has_weights: bool,
    pub n_vocab: i32,
    pub n_ctx_train: i32,
    pub n_embd: i32,
    pub n_layer: i32,
    pub n_head: i32,
    pub n_head_kv: i32,
    pub n_ff: i32,
    pub n_expert: i32,
    pub n_expert_used: i32,
    pub rms_norm_eps: f32,
    pub rope_freq_base: f32,
    pub n_params: u64,
    pub n_params_active: u64,
    pub n_bytes: u64,
}

/// A loaded, immutable GGUF model (memory-mapped). Freed on drop. `Send + Sync`.
pub struct Model {
    ptr: NonNull<sys::lmoe_model>,
}

// The library's threading rule: a loaded model is immutable and may be used from any thread.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("ptr", &self.ptr).finish()
    }
}

#[cfg(unix)]
fn path_to_cstring(path: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::new(Status::InvalidArgument, "the path contains a NUL byte"))
}

#[cfg(not(unix))]
fn path_to_cstring(path: &Path) -> Result<CString> {
    let s = path
        .to_str()
        .ok_or_else(|| Error::new(Status::InvalidArgument, "the path is not valid Unicode"))?;
    c_string(s, "the path")
}

impl Model {
    /// Loads (memory-maps and validates) the GGUF file at `path`.
    pub fn load<P: AsRef<Path>>(path: P) -> Result<Model> {
        Model::load_with(path, &ModelParams::default())
    }

    /// Loads with options.
    pub fn load_with<P: AsRef<Path>>(path: P, params: &ModelParams) -> Result<Model> {
        let cpath = path_to_cstring(path.as_ref())?;
        unsafe {
            let mut mp = MaybeUninit::<sys::lmoe_model_params>::zeroed();
            check(sys::lmoe_model_default_params(mp.as_mut_ptr(), size_of::<sys::lmoe_model_params>()))?;
            let mut mp = mp.assume_init();
            mp.vocab_only = params.vocab_only as c_int;
            let mut out: *mut sys::lmoe_model = ptr::null_mut();
            check(sys::lmoe_model_load(cpath.as_ptr(), &mp, &mut out))?;
            NonNull::new(out)
                .map(|ptr| Model { ptr })
                .ok_or_else(|| Error::new(Status::Internal, "lmoe_model_load returned no model"))
        }
    }

    /// The raw pointer, for use with `llamamoe_sys` (still owned by this `Model`).
    pub fn as_ptr(&self) -> *const sys::lmoe_model {
        self.ptr.as_ptr()
    }

    /// Architecture, sizes and parameter counts.
    pub fn info(&self) -> ModelInfo {
        let i = unsafe {
            let mut i = MaybeUninit::<sys::lmoe_model_info>::zeroed();
            // cannot fail for a valid model and a full-size struct
            let _ = sys::lmoe_model_get_info(self.as_ptr(), i.as_mut_ptr(), size_of::<sys::lmoe_model_info>());
            i.assume_init()
        };
        ModelInfo {
            architecture: chars_to_string(&i.architecture),
            name: chars_to_string(&i.name),
            has_weights: i.has_weights != 0,
            n_vocab: i.n_vocab,
            n_ctx_train: i.n_ctx_train,
            n_embd: i.n_embd,
            n_layer: i.n_layer,
            n_head: i.n_head,
            n_head_kv: i.n_head_kv,
            n_ff: i.n_ff,
            n_expert: i.n_expert,
            n_expert_used: i.n_expert_used,
            rms_norm_eps: i.rms_norm_eps,
            rope_freq_base: i.rope_freq_base,
            n_params: i.n_params,
            n_params_active: i.n_params_active,
            n_bytes: i.n_bytes,
        }
    }

    /// The value of a GGUF metadata key as text (see `lmoe_model_meta_string`).
    pub fn meta(&self, key: &str) -> Result<String> {
        let ckey = c_string(key, "the key")?;
        let mut buf = vec![0 as c_char; 256];
        loop {
            let mut len = 0usize;
            let st = unsafe {
                sys::lmoe_model_meta_string(self.as_ptr(), ckey.as_ptr(), buf.as_mut_ptr(), buf.len(), &mut len)
            };
            if st == sys::LMOE_ERR_BUFFER_TOO_SMALL && len + 1 > buf.len() {
                buf.resize(len + 1, 0);
                continue;
            }
            check(st)?;
            return Ok(chars_to_string(&buf[..len]));
        }
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<Token> {
        let t = unsafe { sys::lmoe_token_bos(self.as_ptr()) };
        if t < 0 { None } else { Some(t) }
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos(&self) -> Option<Token> {
        let t = unsafe { sys::lmoe_token_eos(self.as_ptr()) };
        if t < 0 { None } else { Some(t) }
    }

    /// Tokenizes `text` the way SentencePiece does; `add_bos` puts BOS first.
    pub fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<Token>> {
        grow_and_fill(text.len() + 2, |tokens: &mut [Token], n| unsafe {
            sys::lmoe_tokenize(
                self.as_ptr(),
                text.as_ptr() as *const c_char,
                text.len(),
                add_bos as c_int,
                tokens.as_mut_ptr(),
                tokens.len(),
                n,
            )
        })
    }

    /// Decodes tokens to bytes (control tokens vanish; byte tokens give raw bytes).
    pub fn detokenize_bytes(&self, tokens: &[Token]) -> Result<Vec<u8>> {
        grow_and_fill(tokens.len() * 8 + 16, |buf: &mut [u8], len| unsafe {
            sys::lmoe_detokenize(
                self.as_ptr(),
                tokens.as_ptr(),
                tokens.len(),
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
                len,
            )
        })
    }

    /// Decodes tokens to text; invalid UTF-8 (e.g. a cut byte-fallback sequence) becomes U+FFFD.
    pub fn detokenize(&self, tokens: &[Token]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.detokenize_bytes(tokens)?).into_owned())
    }

    /// The bytes of one token as it appears inside decoded text.
    pub fn token_to_piece(&self, token: Token, strip_leading_space: bool) -> Result<Vec<u8>> {
        grow_and_fill(32, |buf: &mut [u8], len| unsafe {
            sys::lmoe_token_to_piece(
                self.as_ptr(),
                token,
                strip_leading_space as c_int,
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
                len,
            )
        })
    }

    /// Whether generation stops when the model produces BOS (metadata `llamamoe.stop_on_bos`,
    /// set for llama2.c models).
    pub fn stop_on_bos(&self) -> bool {
        self.meta("llamamoe.stop_on_bos").map(|v| v == "true").unwrap_or(false)
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        unsafe { sys::lmoe_model_free(self.ptr.as_ptr()) }
    }
}

// ---- Sampler --------------------------------------------------------------------------------

/// Sampling settings (`lmoe_sampler_params`); `Default` gives the library's defaults
/// (temperature 1, top-p 0.9, seed 42, everything else off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: i32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    pub seed: u64,
}

impl SamplerParams {
    /// Greedy decoding (temperature 0).
    pub fn greedy() -> SamplerParams {
        SamplerParams { temperature: 0.0, ..SamplerParams::default() }
    }

    fn to_sys(self) -> sys::lmoe_sampler_params {
        sys::lmoe_sampler_params {
            struct_size: size_of::<sys::lmoe_sampler_params>(),
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        }
    }
}

impl Default for SamplerParams {
    fn default() -> SamplerParams {
        let p = unsafe {
            let mut p = MaybeUninit::<sys::lmoe_sampler_params>::zeroed();
            let _ = sys::lmoe_sampler_default_params(p.as_mut_ptr(), size_of::<sys::lmoe_sampler_params>());
            p.assume_init()
        };
        SamplerParams {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            repeat_last_n: p.repeat_last_n,
            seed: p.seed,
        }
    }
}

/// Turns logits into tokens. `Send`, not `Sync` (one thread at a time).
#[derive(Debug)]
pub struct Sampler {
    ptr: NonNull<sys::lmoe_sampler>,
}

unsafe impl Send for Sampler {}

impl Sampler {
    /// Creates a sampler; invalid settings (e.g. a negative temperature) give an error.
    pub fn new(params: &SamplerParams) -> Result<Sampler> {
        let p = params.to_sys();
        let mut out: *mut sys::lmoe_sampler = ptr::null_mut();
        check(unsafe { sys::lmoe_sampler_create(&p, &mut out) })?;
        NonNull::new(out)
            .map(|ptr| Sampler { ptr })
            .ok_or_else(|| Error::new(Status::Internal, "lmoe_sampler_create returned no sampler"))
    }

    /// Picks a token from logits (does not add it to the history; see [`Sampler::accept`]).
    pub fn sample(&mut self, logits: &[f32]) -> Result<Token> {
        if logits.len() > i32::MAX as usize {
            return Err(Error::new(Status::InvalidArgument, "too many logits"));
        }
        let mut t: Token = 0;
        check(unsafe { sys::lmoe_sampler_sample(self.ptr.as_ptr(), logits.as_ptr(), logits.len() as i32, &mut t) })?;
        Ok(t)
    }

    /// Adds a token to the history the repetition penalty looks at.
    pub fn accept(&mut self, token: Token) {
        unsafe { sys::lmoe_sampler_accept(self.ptr.as_ptr(), token) }
    }

    /// Restores the RNG to its seed and forgets the history.
    pub fn reset(&mut self) {
        unsafe { sys::lmoe_sampler_reset(self.ptr.as_ptr()) }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        unsafe { sys::lmoe_sampler_free(self.ptr.as_ptr()) }
    }
}

// ---- Context --------------------------------------------------------------------------------

/// Options of [`Context::new`]; 0 means the library's default for each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextParams {
    /// KV cache size in tokens; 0 = the model's training context.
    pub n_ctx: u32,
    /// Evaluation threads, caller included; 0 = one per online CPU.
    pub n_threads: i32,
    /// Most tokens one forward pass evaluates; 0 = 512.
    pub n_batch: u32,
}

/// Why generation stopped (`lmoe_stop_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    None,
    Eos,
    Bos,
    StopString,
    MaxTokens,
    Callback,
    Other(i32),
}

impl StopReason {
    fn from_code(c: c_int) -> StopReason {
        match c {
            sys::LMOE_STOP_NONE => StopReason::None,
            sys::LMOE_STOP_EOS => StopReason::Eos,
            sys::LMOE_STOP_BOS => StopReason::Bos,
            sys::LMOE_STOP_STRING => StopReason::StopString,
            sys::LMOE_STOP_MAX_TOKENS => StopReason::MaxTokens,
            sys::LMOE_STOP_CALLBACK => StopReason::Callback,
            other => StopReason::Other(other),
        }
    }
}

/// Settings of [`Context::generate`] and [`Context::tokens`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Tokens to sample at most, >= 0 (default 256).
    pub max_tokens: i32,
    /// Put BOS before the prompt when the context is empty (default true).
    pub add_bos: bool,
    /// Generation stops before any of these (not used by [`Context::tokens`]).
    pub stop: Vec<String>,
    /// How tokens are picked.
    pub sampler: SamplerParams,
}

impl Default for GenerateParams {
    fn default() -> GenerateParams {
        GenerateParams { max_tokens: 256, add_bos: true, stop: Vec::new(), sampler: SamplerParams::default() }
    }
}

/// Everything [`Context::generate_full`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated text (not including the prompt). Invalid UTF-8 becomes U+FFFD.
    pub text: String,
    /// Every sampled token, including an EOS/BOS that ended generation.
    pub tokens: Vec<Token>,
    pub stop_reason: StopReason,
    /// Prompt tokens evaluated (BOS included).
    pub n_prompt_tokens: u32,
    /// Tokens sampled.
    pub n_generated: u32,
    pub prompt_ms: f64,
    pub generate_ms: f64,
}

/// One sequence's KV cache, scratch buffers and thread pool, borrowing its [`Model`].
/// `Send`, not `Sync`. Freed on drop.
pub struct Context<'m> {
    ptr: NonNull<sys::lmoe_context>,
    model: &'m Model,
    n_vocab: usize,
}

// A context is used by one thread at a time (&mut self), but may move between threads. The raw
// pointer keeps it !Sync.
unsafe impl Send for Context<'_> {}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").field("ptr", &self.ptr).field("n_tokens", &self.n_tokens()).finish()
    }
}

struct Collector {
    text: Vec<u8>,
    tokens: Vec<Token>,
}

unsafe extern "C" fn collect_text(user: *mut c_void, text: *const c_char, len: usize, _token: Token) -> c_int {
    let c = &mut *(user as *mut Collector);
    if len > 0 && !text.is_null() {
        c.text.extend_from_slice(std::slice::from_raw_parts(text as *const u8, len));
    }
    0
}

unsafe extern "C" fn collect_token(user: *mut c_void, token: Token) -> c_int {
    let c = &mut *(user as *mut Collector);
    c.tokens.push(token);
    0
}

impl<'m> Context<'m> {
    /// Creates a context for `model` (which must have weights).
    pub fn new(model: &'m Model, params: ContextParams) -> Result<Context<'m>> {
        unsafe {
            let mut cp = MaybeUninit::<sys::lmoe_context_params>::zeroed();
            check(sys::lmoe_context_default_params(cp.as_mut_ptr(), size_of::<sys::lmoe_context_params>()))?;
            let mut cp = cp.assume_init();
            cp.n_ctx = params.n_ctx;
            cp.n_threads = params.n_threads;
            cp.n_batch = params.n_batch;
            let mut out: *mut sys::lmoe_context = ptr::null_mut();
            check(sys::lmoe_context_create(model.as_ptr(), &cp, &mut out))?;
            NonNull::new(out)
                .map(|ptr| Context { ptr, model, n_vocab: model.info().n_vocab.max(0) as usize })
                .ok_or_else(|| Error::new(Status::Internal, "lmoe_context_create returned no context"))
        }
    }

    /// The model this context was created from.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The raw pointer, for use with `llamamoe_sys` (still owned by this `Context`).
    pub fn as_ptr(&self) -> *mut sys::lmoe_context {
        self.ptr.as_ptr()
    }

    /// Tokens in the KV cache.
    pub fn n_tokens(&self) -> u32 {
        unsafe { sys::lmoe_context_n_tokens(self.ptr.as_ptr()) }
    }

    /// Capacity of the KV cache in tokens.
    pub fn n_ctx(&self) -> u32 {
        unsafe { sys::lmoe_context_n_ctx(self.ptr.as_ptr()) }
    }

    /// Evaluates `tokens` after what the context holds and computes the last one's logits.
    /// On error nothing is added.
    pub fn eval(&mut self, tokens: &[Token]) -> Result<()> {
        check(unsafe { sys::lmoe_eval(self.ptr.as_ptr(), tokens.as_ptr(), tokens.len()) })
    }

    /// The `n_vocab` logits of the last successful [`Context::eval`], or `None` if there was none
    /// since creation, reset or an aborted eval.
    pub fn logits(&self) -> Option<&[f32]> {
        let p = unsafe { sys::lmoe_logits(self.ptr.as_ptr()) };
        if p.is_null() {
            return None;
        }
        let n = self.n_vocab;
        // valid until the next eval/reset/free, all of which need &mut self or self
        Some(unsafe { std::slice::from_raw_parts(p, n) })
    }

    /// Empties the KV cache and zeroes the expert counts.
    pub fn reset(&mut self) {
        unsafe { sys::lmoe_context_reset(self.ptr.as_ptr()) }
    }

    /// Rolls the KV cache back to its first `n_tokens` tokens.
    pub fn truncate(&mut self, n_tokens: u32) -> Result<()> {
        check(unsafe { sys::lmoe_context_truncate(self.ptr.as_ptr(), n_tokens) })
    }

    /// How often each expert was selected: `counts[layer][expert]`. A dense model gives an
    /// error with [`Status::Misuse`].
    pub fn expert_counts(&self) -> Result<Vec<Vec<u64>>> {
        let info = self.model.info();
        let (n_layer, n_expert) = (info.n_layer.max(0) as usize, info.n_expert.max(0) as usize);
        let mut flat = vec![0u64; n_layer * n_expert];
        check(unsafe { sys::lmoe_context_expert_counts(self.ptr.as_ptr(), flat.as_mut_ptr(), flat.len()) })?;
        if n_expert == 0 {
            return Ok(Vec::new());
        }
        Ok(flat.chunks(n_expert).map(|c| c.to_vec()).collect())
    }

    /// Sets every expert count to zero (the KV cache is kept).
    pub fn reset_expert_counts(&mut self) {
        unsafe { sys::lmoe_context_reset_expert_counts(self.ptr.as_ptr()) }
    }

    /// Generates text after `prompt` with `lmoe_generate` and returns it (without the prompt).
    pub fn generate(&mut self, prompt: &str, params: &GenerateParams) -> Result<String> {
        self.generate_full(prompt, params).map(|g| g.text)
    }

    /// As [`Context::generate`], also returning the tokens, stop reason and timings.
    pub fn generate_full(&mut self, prompt: &str, params: &GenerateParams) -> Result<Generation> {
        let sampler = Sampler::new(&params.sampler)?;
        let stops = params
            .stop
            .iter()
            .map(|s| c_string(s, "a stop string"))
            .collect::<Result<Vec<CString>>>()?;
        let stop_ptrs: Vec<*const c_char> = stops.iter().map(|s| s.as_ptr()).collect();
        let mut collector = Collector { text: Vec::new(), tokens: Vec::new() };
        unsafe {
            let mut gp = MaybeUninit::<sys::lmoe_generate_params>::zeroed();
            check(sys::lmoe_generate_default_params(gp.as_mut_ptr(), size_of::<sys::lmoe_generate_params>()))?;
            let mut gp = gp.assume_init();
            gp.max_tokens = params.max_tokens;
            gp.add_bos = params.add_bos as c_int;
            gp.stop_strings = if stop_ptrs.is_empty() { ptr::null() } else { stop_ptrs.as_ptr() };
            gp.n_stop_strings = stop_ptrs.len();
            gp.on_text = Some(collect_text);
            gp.on_token = Some(collect_token);
            gp.user = &mut collector as *mut Collector as *mut c_void;
            let mut res = MaybeUninit::<sys::lmoe_generate_result>::zeroed();
            check(sys::lmoe_generate(
                self.ptr.as_ptr(),
                sampler.ptr.as_ptr(),
                prompt.as_ptr() as *const c_char,
                prompt.len(),
                &gp,
                res.as_mut_ptr(),
                size_of::<sys::lmoe_generate_result>(),
            ))?;
            let res = res.assume_init();
            Ok(Generation {
                text: String::from_utf8_lossy(&collector.text).into_owned(),
                tokens: collector.tokens,
                stop_reason: StopReason::from_code(res.stop_reason),
                n_prompt_tokens: res.n_prompt_tokens,
                n_generated: res.n_generated,
                prompt_ms: res.prompt_ms,
                generate_ms: res.generate_ms,
            })
        }
    }

    /// Evaluates `prompt` (tokenized as a text of its own, with BOS first if `params.add_bos`
    /// and the context is empty) and returns an iterator that samples one token per step with
    /// `lmoe_eval` and a [`Sampler`]: it yields up to `params.max_tokens` tokens and ends before
    /// EOS (or BOS, for models that stop on it). `params.stop` is not used. Like
    /// `lmoe_generate`, the last token yielded is evaluated only if iteration continues.
    /// Decode the tokens with [`Model::detokenize`].
    pub fn tokens<'c>(&'c mut self, prompt: &str, params: &GenerateParams) -> Result<TokenStream<'c, 'm>> {
        if params.max_tokens < 0 {
            return Err(Error::new(Status::InvalidArgument, "max_tokens must be >= 0"));
        }
        let sampler = Sampler::new(&params.sampler)?;
        let ids = self.model.tokenize(prompt, params.add_bos && self.n_tokens() == 0)?;
        if !ids.is_empty() {
            self.eval(&ids)?;
        }
        let model = self.model;
        Ok(TokenStream {
            eos: model.eos(),
            bos: if model.stop_on_bos() { model.bos() } else { None },
            ctx: self,
            sampler,
            pending: None,
            remaining: params.max_tokens,
            done: false,
        })
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        unsafe { sys::lmoe_context_free(self.ptr.as_ptr()) }
    }
}

/// The iterator of [`Context::tokens`]: yields `Ok(token)` per step, or one `Err` and then ends.
pub struct TokenStream<'c, 'm> {
    ctx: &'c mut Context<'m>,
    sampler: Sampler,
    pending: Option<Token>,
    remaining: i32,
    eos: Option<Token>,
    bos: Option<Token>,
    done: bool,
}

impl TokenStream<'_, '_> {
    fn step(&mut self) -> Result<Option<Token>> {
        if let Some(t) = self.pending.take() {
            self.ctx.eval(&[t])?;
        }
        let token = match self.ctx.logits() {
            Some(logits) => self.sampler.sample(logits)?,
            None => return Err(Error::new(Status::Misuse, "no logits: the prompt was empty and the context holds nothing")),
        };
        self.sampler.accept(token);
        if Some(token) == self.eos || Some(token) == self.bos {
            return Ok(None);
        }
        self.pending = Some(token);
        Ok(Some(token))
    }
}

impl Iterator for TokenStream<'_, '_> {
    type Item = Result<Token>;

    fn next(&mut self) -> Option<Result<Token>> {
        if self.done || self.remaining <= 0 {
            return None;
        }
        self.remaining -= 1;
        match self.step() {
            Ok(Some(t)) => Some(Ok(t)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn thread_markers() {
        assert_send_sync::<Model>();
        assert_send::<Context<'static>>();
        assert_send::<Sampler>();
    }

    #[test]
    fn version_matches_header() {
        assert_eq!(version_number(), sys::LMOE_VERSION_NUMBER);
        assert_eq!(version(), sys::LMOE_VERSION_STRING);
    }

    #[test]
    fn status_round_trip() {
        for code in 1..=12 {
            assert_eq!(Status::from_code(code).code(), code);
        }
        assert!(!Status::Io.description().is_empty());
    }

    #[test]
    fn invalid_sampler_params() {
        let e = Sampler::new(&SamplerParams { temperature: -1.0, ..SamplerParams::default() }).unwrap_err();
        assert_eq!(e.status(), Status::InvalidArgument);
        assert!(e.message().contains("temperature"), "{}", e);
        assert!(Sampler::new(&SamplerParams::greedy()).is_ok());
    }
}
