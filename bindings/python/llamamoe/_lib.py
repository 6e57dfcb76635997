"""Low-level ctypes declarations of include/llamamoe.h.

Everything here mirrors the C header one to one: the params and info structs (field by field, in
order, starting with ``struct_size``), the callback types and the function prototypes. The
Pythonic API in :mod:`llamamoe` is built on top of it; use this module directly only if you need
something the high-level classes do not offer.

The shared library is loaded lazily, on the first call of :func:`lib`, so that ``import llamamoe``
works even where the library is not installed.
"""

import ctypes
import ctypes.util
import os
import threading

__all__ = [
    "LibraryNotFoundError", "lib", "library_path",
    "ModelParams", "ModelInfo", "ContextParams", "SamplerParams", "GenerateParams",
    "GenerateResult", "LOG_FN", "ABORT_FN", "ROUTING_FN", "TEXT_FN", "TOKEN_FN",
]

# ------------------------------------------------------------------------------------------------
# Constants (enum values are fixed by the header; new ones are only appended)
# ------------------------------------------------------------------------------------------------

LMOE_OK = 0
LMOE_ERR_INVALID_ARGUMENT = 1
LMOE_ERR_IO = 2
LMOE_ERR_BAD_FILE = 3
LMOE_ERR_UNSUPPORTED = 4
LMOE_ERR_OUT_OF_MEMORY = 5
LMOE_ERR_CONTEXT_FULL = 6
LMOE_ERR_BUFFER_TOO_SMALL = 7
LMOE_ERR_MISUSE = 8
LMOE_ERR_ABORTED = 9
LMOE_ERR_INTERNAL = 10

LMOE_LOG_ERROR = 0
LMOE_LOG_WARN = 1
LMOE_LOG_INFO = 2
LMOE_LOG_DEBUG = 3

LMOE_STOP_NONE = 0
LMOE_STOP_EOS = 1
LMOE_STOP_BOS = 2
LMOE_STOP_STRING = 3
LMOE_STOP_MAX_TOKENS = 4
LMOE_STOP_CALLBACK = 5

# ------------------------------------------------------------------------------------------------
# Types
# ------------------------------------------------------------------------------------------------

lmoe_token = ctypes.c_int32
lmoe_status = ctypes.c_int      # a C enum
lmoe_log_level = ctypes.c_int   # a C enum
lmoe_stop_reason = ctypes.c_int  # a C enum

# typedef void (*lmoe_log_fn)(void *user, lmoe_log_level level, const char *message);
LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, lmoe_log_level, ctypes.c_char_p)
# typedef int (*lmoe_abort_fn)(void *user);
ABORT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
# typedef void (*lmoe_routing_fn)(void *user, int32_t layer, uint32_t pos, const int32_t *experts,
#                                 const float *weights, int32_t n_used);
ROUTING_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_uint32,
                              ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_float),
                              ctypes.c_int32)
# typedef int (*lmoe_text_fn)(void *user, const char *text, size_t len, lmoe_token token);
# (text is not NUL-terminated: declared as char * so ctypes does not read it as a C string)
TEXT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char),
                           ctypes.c_size_t, lmoe_token)
# typedef int (*lmoe_token_fn)(void *user, lmoe_token token);
TOKEN_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, lmoe_token)


class ModelParams(ctypes.Structure):
    """lmoe_model_params."""
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("log_fn", LOG_FN),
        ("log_user", ctypes.c_void_p),
        ("log_level", lmoe_log_level),
        ("vocab_only", ctypes.c_int),
    ]


class ModelInfo(ctypes.Structure):
    """lmoe_model_info."""
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("architecture", ctypes.c_char * 32),
        ("name", ctypes.c_char * 64),
        ("has_weights", ctypes.c_int),
        ("n_vocab", ctypes.c_int32),
        ("n_ctx_train", ctypes.c_int32),
        ("n_embd", ctypes.c_int32),
        ("n_layer", ctypes.c_int32),
        ("n_head", ctypes.c_int32),
        ("n_head_kv", ctypes.c_int32),
        ("n_ff", ctypes.c_int32),
        ("n_expert", ctypes.c_int32),
        ("n_expert_used", ctypes.c_int32),
        ("rms_norm_eps", ctypes.c_float),
        ("rope_freq_base", ctypes.c_float),
        ("n_params", ctypes.c_uint64),
        ("n_params_active", ctypes.c_uint64),
        ("n_bytes", ctypes.c_uint64),
    ]


class ContextParams(ctypes.Structure):
    """lmoe_context_params."""
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("n_ctx", ctypes.c_uint32),
        ("n_threads", ctypes.c_int32),
        ("log_fn", LOG_FN),
        ("log_user", ctypes.c_void_p),
        ("log_level", lmoe_log_level),
        ("abort_fn", ABORT_FN),
        ("abort_user", ctypes.c_void_p),
        ("routing_fn", ROUTING_FN),
        ("routing_user", ctypes.c_void_p),
        ("n_batch", ctypes.c_uint32),
    ]


class SamplerParams(ctypes.Structure):
    """lmoe_sampler_params."""
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("temperature", ctypes.c_float),
        ("top_k", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("min_p", ctypes.c_float),
        ("repeat_penalty", ctypes.c_float),
        ("repeat_last_n", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
    ]


class GenerateParams(ctypes.Structure):
    """lmoe_generate_params."""
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("max_tokens", ctypes.c_int32),
        ("add_bos", ctypes.c_int),
        ("stop_strings", ctypes.POINTER(ctypes.c_char_p)),
        ("n_stop_strings", ctypes.c_size_t),
        ("on_text", TEXT_FN),
        ("on_token", TOKEN_FN),
        ("user", ctypes.c_void_p),
    ]


class GenerateResult(ctypes.Structure):
    """lmoe_generate_result."""
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("stop_reason", lmoe_stop_reason),
        ("n_prompt_tokens", ctypes.c_uint32),
        ("n_generated", ctypes.c_uint32),
        ("prompt_ms", ctypes.c_double),
        ("generate_ms", ctypes.c_double),
    ]


# ------------------------------------------------------------------------------------------------
# Prototypes
# ------------------------------------------------------------------------------------------------

_p = ctypes.POINTER
_vp = ctypes.c_void_p  # opaque lmoe_model *, lmoe_context *, lmoe_sampler *
_size = ctypes.c_size_t

_PROTOTYPES = {
    "lmoe_version": (ctypes.c_char_p, []),
    "lmoe_version_number": (ctypes.c_int, []),
    "lmoe_status_string": (ctypes.c_char_p, [lmoe_status]),
    "lmoe_last_error": (ctypes.c_char_p, []),
    "lmoe_model_default_params": (lmoe_status, [_p(ModelParams), _size]),
    "lmoe_model_load": (lmoe_status, [ctypes.c_char_p, _p(ModelParams), _p(_vp)]),
    "lmoe_model_free": (None, [_vp]),
    "lmoe_model_get_info": (lmoe_status, [_vp, _p(ModelInfo), _size]),
    "lmoe_model_meta_string": (lmoe_status, [_vp, ctypes.c_char_p, ctypes.c_char_p, _size,
                                             _p(_size)]),
    "lmoe_token_bos": (lmoe_token, [_vp]),
    "lmoe_token_eos": (lmoe_token, [_vp]),
    "lmoe_tokenize": (lmoe_status, [_vp, ctypes.c_char_p, _size, ctypes.c_int, _p(lmoe_token),
                                    _size, _p(_size)]),
    "lmoe_detokenize": (lmoe_status, [_vp, _p(lmoe_token), _size, ctypes.c_char_p, _size,
                                      _p(_size)]),
    "lmoe_token_to_piece": (lmoe_status, [_vp, lmoe_token, ctypes.c_int, ctypes.c_char_p, _size,
                                          _p(_size)]),
    "lmoe_context_default_params": (lmoe_status, [_p(ContextParams), _size]),
    "lmoe_context_create": (lmoe_status, [_vp, _p(ContextParams), _p(_vp)]),
    "lmoe_context_free": (None, [_vp]),
    "lmoe_context_reset": (None, [_vp]),
    "lmoe_context_n_tokens": (ctypes.c_uint32, [_vp]),
    "lmoe_context_n_ctx": (ctypes.c_uint32, [_vp]),
    "lmoe_context_expert_counts": (lmoe_status, [_vp, _p(ctypes.c_uint64), _size]),
    "lmoe_context_reset_expert_counts": (None, [_vp]),
    "lmoe_context_model": (_vp, [_vp]),
    "lmoe_eval": (lmoe_status, [_vp, _p(lmoe_token), _size]),
    "lmoe_logits": (_p(ctypes.c_float), [_vp]),
    "lmoe_sampler_default_params": (lmoe_status, [_p(SamplerParams), _size]),
    "lmoe_sampler_create": (lmoe_status, [_p(SamplerParams), _p(_vp)]),
    "lmoe_sampler_free": (None, [_vp]),
    "lmoe_sampler_reset": (None, [_vp]),
    "lmoe_sampler_sample": (lmoe_status, [_vp, _p(ctypes.c_float), ctypes.c_int32,
                                          _p(lmoe_token)]),
    "lmoe_sampler_accept": (None, [_vp, lmoe_token]),
    "lmoe_generate_default_params": (lmoe_status, [_p(GenerateParams), _size]),
    "lmoe_generate": (lmoe_status, [_vp, _vp, ctypes.c_char_p, _size, _p(GenerateParams),
                                    _p(GenerateResult), _size]),
}


class LibraryNotFoundError(ImportError):
    """The shared library libllamamoe could not be found or loaded.

    Set the environment variable LLAMAMOE_LIBRARY to the path of libllamamoe.so, or install the
    library where the dynamic loader finds it."""


_lock = threading.Lock()
_lib = None
_lib_path = None


def _candidates():
    env = os.environ.get("LLAMAMOE_LIBRARY")
    if env:
        return [env], True
    found = ctypes.util.find_library("llamamoe")
    names = [found] if found else []
    names.append("libllamamoe.so.0")
    return names, False


def lib():
    """Returns the loaded ctypes.CDLL with every prototype declared (loads it on first use).

    Order: the path in $LLAMAMOE_LIBRARY if set, else ctypes.util.find_library('llamamoe'),
    else 'libllamamoe.so.0'. Raises LibraryNotFoundError if none loads."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        names, from_env = _candidates()
        errors = []
        for name in names:
            try:
                handle = ctypes.CDLL(name)
            except OSError as e:
                errors.append("%s: %s" % (name, e))
                continue
            try:
                for fn_name, (restype, argtypes) in _PROTOTYPES.items():
                    fn = getattr(handle, fn_name)
                    fn.restype = restype
                    fn.argtypes = argtypes
            except AttributeError as e:
                errors.append("%s: not libllamamoe (%s)" % (name, e))
                continue
            _lib, _lib_path = handle, name
            return _lib
        hint = ("LLAMAMOE_LIBRARY is set but does not name a loadable libllamamoe"
                if from_env else
                "set LLAMAMOE_LIBRARY to the path of libllamamoe.so or install the library")
        raise LibraryNotFoundError("cannot load libllamamoe (%s): %s" % (hint, "; ".join(errors)),
                                   name="llamamoe")


def library_path():
    """The name or path the shared library was loaded from (loads it if needed)."""
    lib()
    return _lib_path
