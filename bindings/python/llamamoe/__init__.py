"""llamamoe - Python bindings for libllamamoe (LLaMA and mixture-of-experts LLaMA inference).

Pure Python over ctypes: no build step, no dependencies. The shared library is found through
$LLAMAMOE_LIBRARY, else ctypes.util.find_library('llamamoe'), else 'libllamamoe.so.0'; it is loaded
on first use, so importing this package always works.

Usage::

    import llamamoe
    with llamamoe.Model("stories260K.gguf") as model, llamamoe.Context(model) as ctx:
        for text in ctx.generate("Once upon a time", max_tokens=64, temperature=0):
            print(text, end="", flush=True)

Every failing library call raises :class:`Error` (a RuntimeError) with the status code, its name
and the library's detailed message (lmoe_last_error()).
"""

import codecs
import ctypes
import os
import weakref

from . import _lib
from ._lib import LibraryNotFoundError

__all__ = [
    "Error", "LibraryNotFoundError", "Model", "Context", "Sampler", "Generation", "Completion",
    "version", "version_number", "status_string",
    "STOP_NONE", "STOP_EOS", "STOP_BOS", "STOP_STRING", "STOP_MAX_TOKENS", "STOP_CALLBACK",
    "LOG_ERROR", "LOG_WARN", "LOG_INFO", "LOG_DEBUG",
]

__version__ = "0.1.0"

STOP_NONE = _lib.LMOE_STOP_NONE
STOP_EOS = _lib.LMOE_STOP_EOS
STOP_BOS = _lib.LMOE_STOP_BOS
STOP_STRING = _lib.LMOE_STOP_STRING
STOP_MAX_TOKENS = _lib.LMOE_STOP_MAX_TOKENS
STOP_CALLBACK = _lib.LMOE_STOP_CALLBACK

LOG_ERROR = _lib.LMOE_LOG_ERROR
LOG_WARN = _lib.LMOE_LOG_WARN
LOG_INFO = _lib.LMOE_LOG_INFO
LOG_DEBUG = _lib.LMOE_LOG_DEBUG

_STOP_NAMES = {STOP_NONE: "none", STOP_EOS: "eos", STOP_BOS: "bos", STOP_STRING: "stop string",
               STOP_MAX_TOKENS: "max tokens", STOP_CALLBACK: "callback"}


# ------------------------------------------------------------------------------------------------
# Errors and library-wide functions
# ------------------------------------------------------------------------------------------------

class Error(RuntimeError):
    """A libllamamoe call failed.

    Attributes:
        status: the lmoe_status code (int, nonzero).
        status_name: lmoe_status_string(status), e.g. "I/O error".
        message: the detail from lmoe_last_error() (which file, field, value...).
    """

    def __init__(self, status, message, status_name=None):
        self.status = int(status)
        self.status_name = status_name if status_name is not None else status_string(status)
        self.message = message
        super().__init__("%s (status %d: %s)" % (message or self.status_name, self.status,
                                                  self.status_name))


def _decode(b):
    return b.decode("utf-8", errors="replace") if b is not None else ""


def status_string(status):
    """The library's fixed English description of a status code."""
    return _decode(_lib.lib().lmoe_status_string(int(status)))


def _check(status):
    """Raises Error for a non-OK status, with lmoe_last_error() as the message."""
    if status != _lib.LMOE_OK:
        raise Error(status, _decode(_lib.lib().lmoe_last_error()))


def version():
    """The library's version string, "MAJOR.MINOR.PATCH"."""
    return _decode(_lib.lib().lmoe_version())


def version_number():
    """The library's MAJOR * 1000000 + MINOR * 1000 + PATCH."""
    return _lib.lib().lmoe_version_number()


def _encode_text(text):
    if isinstance(text, str):
        return text.encode("utf-8")
    return bytes(text)


def _token_array(tokens):
    tokens = list(tokens)
    return (_lib.lmoe_token * max(len(tokens), 1))(*tokens), len(tokens)


def _make_log_fn(log_fn):
    """Wraps a Python callable(level, message) as an lmoe_log_fn (or NULL)."""
    if log_fn is None:
        return _lib.LOG_FN()

    def trampoline(_user, level, message):
        try:
            log_fn(int(level), _decode(message))
        except Exception:  # never let an exception cross into C
            pass
    return _lib.LOG_FN(trampoline)


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------

class _Owned:
    """What Model, Context and Sampler share: a library handle freed by close() (idempotent), a
    context manager, and an Error for use after close. Subclasses set _kind and close()."""

    _kind = "object"
    _handle = None

    @property
    def closed(self):
        """True once close() has run."""
        return self._handle is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _h(self):
        if self._handle is None:
            raise Error(_lib.LMOE_ERR_MISUSE, "the %s is closed" % self._kind)
        return self._handle


class Model(_Owned):
    """A loaded, immutable GGUF model (lmoe_model).

    Args:
        path: the GGUF file (str, bytes or os.PathLike).
        vocab_only: load only the tokenizer (no evaluation possible).
        log_fn: optional callable(level, message) receiving the library's log lines.
        log_level: the most detailed level passed to log_fn (LOG_ERROR..LOG_DEBUG; library
            default LOG_WARN).

    Use as a context manager or call close(). A model may be shared by many Contexts; closing the
    model closes the contexts still open on it first.
    """

    _kind = "model"

    def __init__(self, path, vocab_only=False, log_fn=None, log_level=None):
        self._handle = None
        self._contexts = weakref.WeakSet()
        L = _lib.lib()
        self.path = os.fspath(path)
        params = _lib.ModelParams()
        _check(L.lmoe_model_default_params(ctypes.byref(params), ctypes.sizeof(params)))
        self._log_fn = _make_log_fn(log_fn)  # kept alive as long as the model
        params.log_fn = self._log_fn
        if log_level is not None:
            params.log_level = int(log_level)
        params.vocab_only = 1 if vocab_only else 0
        handle = ctypes.c_void_p()
        status = L.lmoe_model_load(os.fsencode(self.path), ctypes.byref(params),
                                   ctypes.byref(handle))
        if status != _lib.LMOE_OK:
            message = _decode(L.lmoe_last_error())
            shown = os.fsdecode(self.path)
            if shown not in message:
                message = "%s: %s" % (shown, message)
            raise Error(status, message)
        self._handle = handle
        info = _lib.ModelInfo()
        _check(L.lmoe_model_get_info(handle, ctypes.byref(info), ctypes.sizeof(info)))
        self._info = info
        self._bos = L.lmoe_token_bos(handle)
        self._eos = L.lmoe_token_eos(handle)

    # -- lifetime --

    def close(self):
        """Frees the model (and first every Context still open on it). Idempotent."""
        if self._handle is not None:
            for ctx in list(self._contexts):
                ctx.close()
            _lib.lib().lmoe_model_free(self._handle)
            self._handle = None

    def __repr__(self):
        if self._handle is None:
            return "<llamamoe.Model closed>"
        return "<llamamoe.Model %r %s n_vocab=%d n_expert=%d>" % (
            self.name, self.architecture, self.n_vocab, self.n_expert)

    # -- info --

    @property
    def info(self):
        """Every field of lmoe_model_info as a dict (strings decoded)."""
        self._h()
        out = {}
        for name, _type in _lib.ModelInfo._fields_:
            if name == "struct_size":
                continue
            value = getattr(self._info, name)
            out[name] = _decode(value) if isinstance(value, bytes) else value
        return out

    architecture = property(lambda self: _decode(self._info.architecture),
                            doc="general.architecture, e.g. 'llama'.")
    name = property(lambda self: _decode(self._info.name), doc="general.name, or ''.")
    has_weights = property(lambda self: bool(self._info.has_weights),
                           doc="False for a vocabulary-only model.")
    n_vocab = property(lambda self: self._info.n_vocab, doc="Tokens in the vocabulary.")
    n_ctx_train = property(lambda self: self._info.n_ctx_train,
                           doc="Context length the model was trained with.")
    n_embd = property(lambda self: self._info.n_embd, doc="Hidden size.")
    n_layer = property(lambda self: self._info.n_layer, doc="Transformer blocks.")
    n_expert = property(lambda self: self._info.n_expert,
                        doc="Experts per layer; 0 for a dense model.")
    n_expert_used = property(lambda self: self._info.n_expert_used,
                             doc="Experts selected per token; 0 for a dense model.")
    n_params = property(lambda self: self._info.n_params, doc="Parameters stored in the file.")
    bos = property(lambda self: self._bos, doc="The BOS token id, or -1.")
    eos = property(lambda self: self._eos, doc="The EOS token id, or -1.")

    def meta(self, key, default=None):
        """The metadata value of key as text (numbers in decimal, booleans "true"/"false",
        arrays as "[array of N TYPE]").

        If the key is absent, returns default when one is given, else raises Error."""
        L = _lib.lib()
        h = self._h()
        k = key.encode("utf-8")
        n = ctypes.c_size_t(0)
        buf = ctypes.create_string_buffer(256)
        status = L.lmoe_model_meta_string(h, k, buf, len(buf), ctypes.byref(n))
        if status == _lib.LMOE_ERR_BUFFER_TOO_SMALL:
            buf = ctypes.create_string_buffer(n.value + 1)
            status = L.lmoe_model_meta_string(h, k, buf, len(buf), ctypes.byref(n))
        if status == _lib.LMOE_ERR_INVALID_ARGUMENT and default is not None:
            return default
        _check(status)
        return _decode(buf.raw[:n.value])

    @property
    def stop_on_bos(self):
        """Whether generation stops when the model produces BOS (metadata
        llamamoe.stop_on_bos, set for llama2.c models; absent means no)."""
        return self.meta("llamamoe.stop_on_bos", "false") == "true"

    # -- tokenizer --

    def tokenize(self, text, add_bos=True):
        """Token ids of text (str, or bytes taken as they are), with BOS first if add_bos."""
        L = _lib.lib()
        h = self._h()
        data = _encode_text(text)
        cap = len(data) + 2
        while True:
            buf = (_lib.lmoe_token * cap)()
            n = ctypes.c_size_t(0)
            status = L.lmoe_tokenize(h, data, len(data), 1 if add_bos else 0, buf, cap,
                                     ctypes.byref(n))
            if status == _lib.LMOE_ERR_BUFFER_TOO_SMALL and n.value > cap:
                cap = n.value
                continue
            _check(status)
            return list(buf[:n.value])

    def detokenize_bytes(self, tokens):
        """The bytes the tokens decode to (byte-fallback tokens may make it invalid UTF-8)."""
        L = _lib.lib()
        h = self._h()
        arr, count = _token_array(tokens)
        n = ctypes.c_size_t(0)
        status = L.lmoe_detokenize(h, arr, count, None, 0, ctypes.byref(n))
        if status not in (_lib.LMOE_OK, _lib.LMOE_ERR_BUFFER_TOO_SMALL):
            _check(status)
        buf = ctypes.create_string_buffer(max(n.value, 1))
        _check(L.lmoe_detokenize(h, arr, count, buf, len(buf), ctypes.byref(n)))
        return buf.raw[:n.value]

    def detokenize(self, tokens):
        """The text the tokens decode to (invalid UTF-8 becomes U+FFFD)."""
        return _decode(self.detokenize_bytes(tokens))

    def token_to_piece(self, token, strip_leading_space=False):
        """The bytes of one token as it appears inside decoded text."""
        L = _lib.lib()
        h = self._h()
        n = ctypes.c_size_t(0)
        buf = ctypes.create_string_buffer(64)
        status = L.lmoe_token_to_piece(h, int(token), 1 if strip_leading_space else 0, buf,
                                       len(buf), ctypes.byref(n))
        if status == _lib.LMOE_ERR_BUFFER_TOO_SMALL:
            buf = ctypes.create_string_buffer(n.value)
            status = L.lmoe_token_to_piece(h, int(token), 1 if strip_leading_space else 0, buf,
                                           len(buf), ctypes.byref(n))
        _check(status)
        return buf.raw[:n.value]

# ------------------------------------------------------------------------------------------------
# Sampler
# ------------------------------------------------------------------------------------------------

class Sampler(_Owned):
    """Turns logits into the next token (lmoe_sampler).

    Every argument left as None keeps the library default (temperature 1.0, top_k 0 (off),
    top_p 0.9, min_p 0 (off), repeat_penalty 1 (off), repeat_last_n 64, seed 42). temperature 0
    is greedy. Invalid values raise Error (LMOE_ERR_INVALID_ARGUMENT).
    """

    _kind = "sampler"

    def __init__(self, temperature=None, top_k=None, top_p=None, min_p=None, repeat_penalty=None,
                 repeat_last_n=None, seed=None):
        self._handle = None
        L = _lib.lib()
        params = _lib.SamplerParams()
        _check(L.lmoe_sampler_default_params(ctypes.byref(params), ctypes.sizeof(params)))
        for field, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                             ("min_p", min_p), ("repeat_penalty", repeat_penalty),
                             ("repeat_last_n", repeat_last_n), ("seed", seed)):
            if value is not None:
                setattr(params, field, value)
        handle = ctypes.c_void_p()
        _check(L.lmoe_sampler_create(ctypes.byref(params), ctypes.byref(handle)))
        self._handle = handle

    def close(self):
        """Frees the sampler. Idempotent."""
        if self._handle is not None:
            _lib.lib().lmoe_sampler_free(self._handle)
            self._handle = None

    def reset(self):
        """Restores the RNG to its seed and forgets the token history."""
        _lib.lib().lmoe_sampler_reset(self._h())

    def accept(self, token):
        """Adds a token to the history the repetition penalty looks at."""
        _lib.lib().lmoe_sampler_accept(self._h(), int(token))

    def sample(self, logits):
        """Picks a token from logits: a Context (its current logits) or a sequence of floats."""
        if isinstance(logits, Context):
            ptr, n = logits._logits_ptr(), logits.model.n_vocab
        else:
            values = list(logits)
            n = len(values)
            ptr = (ctypes.c_float * max(n, 1))(*values)
        token = _lib.lmoe_token(0)
        _check(_lib.lib().lmoe_sampler_sample(self._h(), ptr, n, ctypes.byref(token)))
        return token.value

# ------------------------------------------------------------------------------------------------
# Context and generation
# ------------------------------------------------------------------------------------------------

class Generation:
    """The iterator Context.generate returns: yields text pieces (str) as they become final.

    After iteration (or during it) these attributes describe the run:
        tokens: the sampled token ids (a final EOS/BOS included).
        n_prompt_tokens: prompt tokens evaluated (BOS included).
        stop_reason: STOP_* constant; STOP_NONE until generation has ended.
    close() stops generation early and frees the sampler.
    """

    def __init__(self, iterator, sampler):
        self._sampler = sampler
        self.tokens = []
        self.n_prompt_tokens = 0
        self.stop_reason = STOP_NONE
        self._it = iterator(self)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    @property
    def stop_reason_name(self):
        """stop_reason as text ("eos", "bos", "stop string", "max tokens", ...)."""
        return _STOP_NAMES.get(self.stop_reason, str(self.stop_reason))

    def text(self):
        """Runs the generation to its end and returns the remaining text joined."""
        return "".join(self)

    def close(self):
        """Stops the generation and frees its sampler."""
        self._it.close()
        self._sampler.close()


class Completion:
    """The result of Context.generate_text (lmoe_generate).

    Attributes: text (str), tokens (sampled ids, a final EOS/BOS included), stop_reason (STOP_*),
    n_prompt_tokens, n_generated, prompt_ms, generate_ms."""

    def __init__(self, text, tokens, result):
        self.text = text
        self.tokens = tokens
        self.stop_reason = result.stop_reason
        self.n_prompt_tokens = result.n_prompt_tokens
        self.n_generated = result.n_generated
        self.prompt_ms = result.prompt_ms
        self.generate_ms = result.generate_ms

    def __str__(self):
        return self.text

    def __repr__(self):
        return "<llamamoe.Completion %d tokens, stop: %s>" % (
            self.n_generated, _STOP_NAMES.get(self.stop_reason, self.stop_reason))


class Context(_Owned):
    """One sequence's KV cache, scratch buffers and thread pool (lmoe_context).

    Args:
        model: a Model with weights; it is kept alive by the context.
        n_ctx: KV cache size in tokens (0: the model's training context).
        n_threads: evaluation threads, caller included (0: one per online CPU).
        n_batch: most tokens per forward pass (0: 512).
        log_fn, log_level: as for Model.
        abort_fn: optional callable() -> bool, checked between layers; True aborts the
            evaluation (Error with status LMOE_ERR_ABORTED).
        routing_fn: optional callable(layer, pos, experts, weights) receiving every routing
            decision of an MoE model (experts: list of ints, weights: list of floats).

    Use from one thread at a time. Use as a context manager or call close().
    An exception raised inside abort_fn or routing_fn is re-raised by the eval/generate call
    that triggered it (an exception in abort_fn also aborts the evaluation).
    """

    _kind = "context"

    def __init__(self, model, n_ctx=0, n_threads=0, n_batch=0, log_fn=None, log_level=None,
                 abort_fn=None, routing_fn=None):
        self._handle = None
        self._callback_error = None
        L = _lib.lib()
        self.model = model
        params = _lib.ContextParams()
        _check(L.lmoe_context_default_params(ctypes.byref(params), ctypes.sizeof(params)))
        params.n_ctx = n_ctx
        params.n_threads = n_threads
        params.n_batch = n_batch
        self._log_fn = _make_log_fn(log_fn)
        params.log_fn = self._log_fn
        if log_level is not None:
            params.log_level = int(log_level)
        # The ctypes callback objects must outlive the context: kept as attributes.
        self._abort_fn = _lib.ABORT_FN()
        if abort_fn is not None:
            def abort_trampoline(_user):
                try:
                    return 1 if abort_fn() else 0
                except BaseException as e:
                    self._callback_error = e
                    return 1
            self._abort_fn = _lib.ABORT_FN(abort_trampoline)
        params.abort_fn = self._abort_fn
        self._routing_fn = _lib.ROUTING_FN()
        if routing_fn is not None:
            def routing_trampoline(_user, layer, pos, experts, weights, n_used):
                if self._callback_error is not None:
                    return
                try:
                    routing_fn(int(layer), int(pos), experts[:n_used], weights[:n_used])
                except BaseException as e:
                    self._callback_error = e
            self._routing_fn = _lib.ROUTING_FN(routing_trampoline)
        params.routing_fn = self._routing_fn
        handle = ctypes.c_void_p()
        _check(L.lmoe_context_create(model._h(), ctypes.byref(params), ctypes.byref(handle)))
        self._handle = handle
        model._contexts.add(self)

    # -- lifetime --

    def close(self):
        """Frees the context. Idempotent."""
        if self._handle is not None:
            _lib.lib().lmoe_context_free(self._handle)
            self._handle = None

    def _raise_callback_error(self):
        e, self._callback_error = self._callback_error, None
        if e is not None:
            raise e

    # -- state --

    @property
    def n_tokens(self):
        """Tokens currently in the KV cache."""
        return _lib.lib().lmoe_context_n_tokens(self._h())

    @property
    def n_ctx(self):
        """Capacity of the KV cache in tokens."""
        return _lib.lib().lmoe_context_n_ctx(self._h())

    def reset(self):
        """Empties the KV cache (next eval starts at position 0) and zeroes the expert counts."""
        _lib.lib().lmoe_context_reset(self._h())

    def reset_expert_counts(self):
        """Zeroes the expert selection counts (the KV cache is kept)."""
        _lib.lib().lmoe_context_reset_expert_counts(self._h())

    def expert_counts(self):
        """How often each expert was selected since creation or the last reset: a list with one
        list of n_expert ints per layer. Raises Error (LMOE_ERR_MISUSE) for a dense model."""
        m = self.model
        n = m.n_layer * m.n_expert
        buf = (ctypes.c_uint64 * max(n, 1))()
        _check(_lib.lib().lmoe_context_expert_counts(self._h(), buf, n))
        flat = list(buf[:n])
        return [flat[i * m.n_expert:(i + 1) * m.n_expert] for i in range(m.n_layer)]

    # -- evaluation --

    def eval(self, tokens):
        """Evaluates tokens (ints) after what the cache holds and computes the last one's
        logits. Raises Error (e.g. LMOE_ERR_CONTEXT_FULL; nothing is evaluated then)."""
        arr, n = _token_array(tokens)
        self._callback_error = None
        status = _lib.lib().lmoe_eval(self._h(), arr, n)
        self._raise_callback_error()
        _check(status)

    def _logits_ptr(self):
        ptr = _lib.lib().lmoe_logits(self._h())
        if not ptr:
            raise Error(_lib.LMOE_ERR_MISUSE,
                        "no logits: nothing was evaluated since the context was created or reset")
        return ptr

    def logits(self):
        """A copy of the n_vocab logits of the last successful eval, as a list of floats.
        Raises Error (LMOE_ERR_MISUSE) if there is none."""
        return self._logits_ptr()[:self.model.n_vocab]

    # -- generation --

    def generate(self, prompt="", max_tokens=256, temperature=None, top_p=None, top_k=None,
                 min_p=None, repeat_penalty=None, repeat_last_n=None, seed=None, stop=None,
                 add_bos=True, sampler=None):
        """Generates text after prompt and returns an iterator (a Generation) of str pieces.

        The loop runs in Python over the public API, as lmoe_generate does: the prompt is
        tokenized as a text of its own (BOS first if add_bos and the context is empty), evaluated
        and added to the sampler's history; then up to max_tokens tokens are sampled, each one
        evaluated before the next is sampled. Generation stops at EOS, at BOS when the model says
        so (metadata llamamoe.stop_on_bos), when the text contains one of the stop strings (the
        stop string and what follows are not yielded), or at max_tokens. Text that could begin a
        stop string is held back until decided; bytes of an incomplete UTF-8 character are held
        until it completes. The token that ends generation is not evaluated.

        Sampling arguments left as None keep the library defaults (see Sampler); alternatively
        pass a Sampler as sampler. Invalid parameters raise Error right away (not at the first
        next()); evaluation errors are raised from the iteration.
        """
        self._h()
        if max_tokens < 0:
            raise Error(_lib.LMOE_ERR_INVALID_ARGUMENT,
                        "generate: max_tokens must be >= 0, got %d" % max_tokens)
        stops = [_encode_text(s) for s in (stop or [])]
        if any(not s for s in stops):
            raise Error(_lib.LMOE_ERR_INVALID_ARGUMENT, "generate: a stop string is empty")
        own_sampler = sampler is None
        if own_sampler:
            sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                              seed=seed)
        prompt_bytes = _encode_text(prompt)
        prompt_ids = self.model.tokenize(prompt_bytes, add_bos=add_bos and self.n_tokens == 0)
        if not prompt_ids and not _lib.lib().lmoe_logits(self._h()):
            raise Error(_lib.LMOE_ERR_MISUSE,
                        "generate: the prompt is empty, BOS is off and the context holds no "
                        "evaluated tokens: there is nothing to generate from")

        def run(gen):
            try:
                yield from self._generate_loop(gen, sampler, prompt_ids, max_tokens, stops)
            finally:
                if own_sampler:
                    sampler.close()
        return Generation(run, sampler if own_sampler else _NoClose())

    def _generate_loop(self, gen, sampler, prompt_ids, max_tokens, stops):
        L = _lib.lib()
        model = self.model
        prev = -1
        if prompt_ids:
            self.eval(prompt_ids)
            for t in prompt_ids:
                sampler.accept(t)
            gen.n_prompt_tokens = len(prompt_ids)
            prev = prompt_ids[-1]
        bos, eos, stop_on_bos = model.bos, model.eos, model.stop_on_bos
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = b""
        reason = STOP_MAX_TOKENS
        token = _lib.lmoe_token(0)
        one = (_lib.lmoe_token * 1)()
        for i in range(max_tokens):
            _check(L.lmoe_sampler_sample(sampler._h(), self._logits_ptr(), model.n_vocab,
                                         ctypes.byref(token)))
            t = token.value
            gen.tokens.append(t)
            sampler.accept(t)
            if t == eos:
                reason = STOP_EOS
                break
            if t == bos and stop_on_bos:
                reason = STOP_BOS
                break
            pending += model.token_to_piece(t, strip_leading_space=(prev >= 0 and prev == bos))
            at = _find_stop(pending, stops)
            if at is not None:
                text = decoder.decode(pending[:at], final=True)
                pending = b""
                if text:
                    yield text
                reason = STOP_STRING
                break
            keep = _held_back(pending, stops)
            release, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
            text = decoder.decode(release)
            if text:
                yield text
            if i + 1 == max_tokens:
                break
            one[0] = t
            self._callback_error = None
            status = L.lmoe_eval(self._h(), one, 1)
            self._raise_callback_error()
            _check(status)
            prev = t
        text = decoder.decode(pending, final=True)
        if text:
            yield text
        gen.stop_reason = reason

    def generate_text(self, prompt="", max_tokens=256, temperature=None, top_p=None, top_k=None,
                      min_p=None, repeat_penalty=None, repeat_last_n=None, seed=None, stop=None,
                      add_bos=True, sampler=None, on_text=None):
        """Generates with the library's own loop (lmoe_generate) and returns a Completion.

        Arguments as for generate(); on_text, if given, is called with each str piece as it is
        released (return True from it to stop). The text is decoded from the complete byte
        stream, so multi-byte characters split across pieces come out whole."""
        L = _lib.lib()
        h = self._h()
        own_sampler = sampler is None
        if own_sampler:
            sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                              seed=seed)
        try:
            params = _lib.GenerateParams()
            _check(L.lmoe_generate_default_params(ctypes.byref(params), ctypes.sizeof(params)))
            params.max_tokens = max_tokens
            params.add_bos = 1 if add_bos else 0
            stops = [_encode_text(s) for s in (stop or [])]
            stop_arr = (ctypes.c_char_p * max(len(stops), 1))(*stops)
            if stops:
                params.stop_strings = ctypes.cast(stop_arr, ctypes.POINTER(ctypes.c_char_p))
                params.n_stop_strings = len(stops)
            chunks, tokens, errors = [], [], []
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

            def text_cb(_user, text, n, _token):
                data = ctypes.string_at(text, n) if n else b""
                chunks.append(data)
                if on_text is not None:
                    try:
                        piece = decoder.decode(data)
                        if piece and on_text(piece):
                            return 1
                    except BaseException as e:
                        errors.append(e)
                        return 1
                return 0

            def token_cb(_user, token):
                tokens.append(int(token))
                return 0
            text_fn = _lib.TEXT_FN(text_cb)  # alive until lmoe_generate returns
            token_fn = _lib.TOKEN_FN(token_cb)
            params.on_text = text_fn
            params.on_token = token_fn
            result = _lib.GenerateResult()
            data = _encode_text(prompt)
            self._callback_error = None
            status = L.lmoe_generate(h, sampler._h(), data, len(data), ctypes.byref(params),
                                     ctypes.byref(result), ctypes.sizeof(result))
            if errors:
                raise errors[0]
            self._raise_callback_error()
            _check(status)
            if on_text is not None:
                tail = decoder.decode(b"", final=True)
                if tail:
                    on_text(tail)
            return Completion(_decode(b"".join(chunks)), tokens, result)
        finally:
            if own_sampler:
                sampler.close()


class _NoClose:
    def close(self):
        pass


def _find_stop(pending, stops):
    """Offset of the earliest complete stop string in pending, or None."""
    best = None
    for s in stops:
        at = pending.find(s)
        if at >= 0 and (best is None or at < best):
            best = at
    return best


def _held_back(pending, stops):
    """Length of the longest tail of pending that begins some stop string."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(pending)), keep, -1):
            if pending.endswith(s[:n]):
                keep = n
                break
    return keep
