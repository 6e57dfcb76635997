package llamamoe

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -lllamamoe
#include <stdint.h>
#include <stdlib.h>
#include "llamamoe.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Version returns the version of the loaded library ("MAJOR.MINOR.PATCH").
func Version() string { return C.GoString(C.lmoe_version()) }

// HeaderVersion is the version of the llamamoe.h this package was compiled against.
const HeaderVersion = C.LMOE_VERSION_STRING

// Status is an lmoe_status code.
type Status int

// The library's status codes (lmoe_status).
const (
	StatusOK              Status = C.LMOE_OK
	StatusInvalidArgument Status = C.LMOE_ERR_INVALID_ARGUMENT
	StatusIO              Status = C.LMOE_ERR_IO
	StatusBadFile         Status = C.LMOE_ERR_BAD_FILE
	StatusUnsupported     Status = C.LMOE_ERR_UNSUPPORTED
	StatusOutOfMemory     Status = C.LMOE_ERR_OUT_OF_MEMORY
	StatusContextFull     Status = C.LMOE_ERR_CONTEXT_FULL
	StatusBufferTooSmall  Status = C.LMOE_ERR_BUFFER_TOO_SMALL
	StatusMisuse          Status = C.LMOE_ERR_MISUSE
	StatusAborted         Status = C.LMOE_ERR_ABORTED
	StatusInternal        Status = C.LMOE_ERR_INTERNAL
)

// String returns the library's fixed description of the status code.
func (s Status) String() string {
	return C.GoString(C.lmoe_status_string(C.lmoe_status(s)))
}

// Error is a failure reported by the library (or detected by this package before calling it).
type Error struct {
	Status  int    // the lmoe_status code (nonzero)
	Message string // detail: lmoe_last_error() of the failing call, or the package's own text
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "llamamoe: " + Status(e.Status).String()
	}
	return "llamamoe: " + Status(e.Status).String() + ": " + e.Message
}

// Is makes errors.Is(err, ErrIO) etc. true for any *Error with the same status: a target *Error
// without Message matches by status alone; one with a Message must match exactly.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Status == e.Status && (t.Message == "" || t.Message == e.Message)
}

// Sentinels for errors.Is, one per status code.
var (
	ErrInvalidArgument = &Error{Status: int(StatusInvalidArgument)}
	ErrIO              = &Error{Status: int(StatusIO)}
	ErrBadFile         = &Error{Status: int(StatusBadFile)}
	ErrUnsupported     = &Error{Status: int(StatusUnsupported)}
	ErrOutOfMemory     = &Error{Status: int(StatusOutOfMemory)}
	ErrContextFull     = &Error{Status: int(StatusContextFull)}
	ErrBufferTooSmall  = &Error{Status: int(StatusBufferTooSmall)}
	ErrMisuse          = &Error{Status: int(StatusMisuse)}
	ErrAborted         = &Error{Status: int(StatusAborted)}
	ErrInternal        = &Error{Status: int(StatusInternal)}
)

func errorf(s Status, format string, args ...interface{}) *Error {
	return &Error{Status: int(s), Message: fmt.Sprintf(format, args...)}
}

var errClosedModel = &Error{Status: int(StatusMisuse), Message: "the model is closed"}
var errClosedContext = &Error{Status: int(StatusMisuse), Message: "the context is closed"}

// lastError builds the *Error for status st; it must run on the OS thread that made the failing
// call (callers hold runtime.LockOSThread).
func lastError(st C.lmoe_status) error {
	if st == C.LMOE_OK {
		return nil
	}
	return &Error{Status: int(st), Message: C.GoString(C.lmoe_last_error())}
}

// call runs f, which makes one failing-or-not library call, and reads lmoe_last_error on the
// same OS thread (the error text is thread-local).
func call(f func() C.lmoe_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return lastError(f())
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

// ModelInfo describes a loaded model (lmoe_model_info).
type ModelInfo struct {
	Architecture  string  // general.architecture, e.g. "llama"
	Name          string  // general.name, or ""
	HasWeights    bool    // false for a vocabulary-only model
	NVocab        int     // tokens in the vocabulary
	NCtxTrain     int     // training context length
	NEmbd         int     // hidden size
	NLayer        int     // transformer blocks
	NHead         int     // attention (query) heads
	NHeadKV       int     // key/value heads
	NFF           int     // FFN intermediate size (per expert for MoE)
	NExpert       int     // experts per layer; 0 for a dense model
	NExpertUsed   int     // experts selected per token; 0 for a dense model
	RMSNormEps    float32 // RMSNorm epsilon
	RopeFreqBase  float32 // RoPE theta
	NParams       uint64  // parameters stored in the file
	NParamsActive uint64  // parameters read per token
	NBytes        uint64  // bytes of tensor data
}

// Model is a loaded, immutable GGUF model. It may be shared by goroutines.
type Model struct {
	mu        sync.RWMutex // write-locked only by Close
	h         *C.lmoe_model
	nContexts int64 // open contexts (atomic)
	info      ModelInfo
	bos, eos  int32
	stopOnBOS bool
}

// ModelOptions are the options of LoadWithOptions.
type ModelOptions struct {
	VocabOnly bool // load only the tokenizer, even if the file has weights
}

// Load memory-maps and validates the GGUF file at path.
func Load(path string) (*Model, error) { return LoadWithOptions(path, ModelOptions{}) }

// LoadWithOptions is Load with options.
func LoadWithOptions(path string, opts ModelOptions) (*Model, error) {
	var p C.lmoe_model_params
	if st := C.lmoe_model_default_params(&p, C.sizeof_lmoe_model_params); st != C.LMOE_OK {
		return nil, errorf(Status(st), "lmoe_model_default_params failed")
	}
	if opts.VocabOnly {
		p.vocab_only = 1
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var h *C.lmoe_model
	if err := call(func() C.lmoe_status { return C.lmoe_model_load(cpath, &p, &h) }); err != nil {
		return nil, err
	}
	m := &Model{h: h}
	var ci C.lmoe_model_info
	if err := call(func() C.lmoe_status {
		return C.lmoe_model_get_info(h, &ci, C.sizeof_lmoe_model_info)
	}); err != nil {
		C.lmoe_model_free(h)
		return nil, err
	}
	m.info = ModelInfo{
		Architecture:  C.GoString(&ci.architecture[0]),
		Name:          C.GoString(&ci.name[0]),
		HasWeights:    ci.has_weights != 0,
		NVocab:        int(ci.n_vocab),
		NCtxTrain:     int(ci.n_ctx_train),
		NEmbd:         int(ci.n_embd),
		NLayer:        int(ci.n_layer),
		NHead:         int(ci.n_head),
		NHeadKV:       int(ci.n_head_kv),
		NFF:           int(ci.n_ff),
		NExpert:       int(ci.n_expert),
		NExpertUsed:   int(ci.n_expert_used),
		RMSNormEps:    float32(ci.rms_norm_eps),
		RopeFreqBase:  float32(ci.rope_freq_base),
		NParams:       uint64(ci.n_params),
		NParamsActive: uint64(ci.n_params_active),
		NBytes:        uint64(ci.n_bytes),
	}
	m.bos = int32(C.lmoe_token_bos(h))
	m.eos = int32(C.lmoe_token_eos(h))
	if v, err := m.Meta("llamamoe.stop_on_bos"); err == nil && v == "true" {
		m.stopOnBOS = true
	}
	runtime.SetFinalizer(m, func(m *Model) { m.Close() })
	return m, nil
}

// Close frees the model. It fails with StatusMisuse while contexts created from the model are
// open. Calling Close again after success does nothing.
func (m *Model) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return nil
	}
	if n := atomic.LoadInt64(&m.nContexts); n > 0 {
		return errorf(StatusMisuse, "Model.Close: %d context(s) created from the model are still open", n)
	}
	C.lmoe_model_free(m.h)
	m.h = nil
	runtime.SetFinalizer(m, nil)
	return nil
}

// acquire read-locks the model and returns its handle, or an error if it is closed.
func (m *Model) acquire() (*C.lmoe_model, error) {
	m.mu.RLock()
	if m.h == nil {
		m.mu.RUnlock()
		return nil, errClosedModel
	}
	return m.h, nil
}

// Info returns the model's hyperparameters and sizes.
func (m *Model) Info() ModelInfo { return m.info }

// BOS returns the beginning-of-sequence token id, or -1.
func (m *Model) BOS() int32 { return m.bos }

// EOS returns the end-of-sequence token id, or -1.
func (m *Model) EOS() int32 { return m.eos }

// StopOnBOS reports whether generation stops when the model produces BOS (llama2.c models).
func (m *Model) StopOnBOS() bool { return m.stopOnBOS }

// Meta returns the value of a metadata key as text (see lmoe_model_meta_string). An absent key
// gives an *Error with StatusInvalidArgument.
func (m *Model) Meta(key string) (string, error) {
	h, err := m.acquire()
	if err != nil {
		return "", err
	}
	defer m.mu.RUnlock()
	ckey := C.CString(key)
	defer C.free(unsafe.Pointer(ckey))
	buf := make([]byte, 256)
	for {
		var n C.size_t
		err := call(func() C.lmoe_status {
			return C.lmoe_model_meta_string(h, ckey, (*C.char)(unsafe.Pointer(&buf[0])),
				C.size_t(len(buf)), &n)
		})
		if e, ok := err.(*Error); ok && e.Status == int(StatusBufferTooSmall) && int(n) >= len(buf) {
			buf = make([]byte, int(n)+1)
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}

func bytePtr(b []byte) *C.char {
	if len(b) == 0 {
		return nil
	}
	return (*C.char)(unsafe.Pointer(&b[0]))
}

func tokenPtr(t []int32) *C.lmoe_token {
	if len(t) == 0 {
		return nil
	}
	return (*C.lmoe_token)(unsafe.Pointer(&t[0]))
}

// Tokenize turns text into token ids (SentencePiece BPE of the stored vocabulary); addBOS puts
// BOS first.
func (m *Model) Tokenize(text string, addBOS bool) ([]int32, error) {
	h, err := m.acquire()
	if err != nil {
		return nil, err
	}
	defer m.mu.RUnlock()
	return tokenize(h, []byte(text), addBOS)
}

func tokenize(h *C.lmoe_model, text []byte, addBOS bool) ([]int32, error) {
	bos := C.int(0)
	if addBOS {
		bos = 1
	}
	tokens := make([]int32, len(text)+2)
	for {
		var n C.size_t
		err := call(func() C.lmoe_status {
			return C.lmoe_tokenize(h, bytePtr(text), C.size_t(len(text)), bos, tokenPtr(tokens),
				C.size_t(len(tokens)), &n)
		})
		if e, ok := err.(*Error); ok && e.Status == int(StatusBufferTooSmall) && int(n) > len(tokens) {
			tokens = make([]int32, int(n))
			continue
		}
		if err != nil {
			return nil, err
		}
		return tokens[:n], nil
	}
}

// Detokenize turns token ids back into text the way SentencePiece decodes (BOS/EOS vanish, the
// leading space of the first piece is removed). The result may hold invalid UTF-8 if the tokens
// end inside a multi-byte character.
func (m *Model) Detokenize(tokens []int32) (string, error) {
	h, err := m.acquire()
	if err != nil {
		return "", err
	}
	defer m.mu.RUnlock()
	buf := make([]byte, 16*len(tokens)+16)
	for {
		var n C.size_t
		err := call(func() C.lmoe_status {
			return C.lmoe_detokenize(h, tokenPtr(tokens), C.size_t(len(tokens)), bytePtr(buf),
				C.size_t(len(buf)), &n)
		})
		if e, ok := err.(*Error); ok && e.Status == int(StatusBufferTooSmall) && int(n) > len(buf) {
			buf = make([]byte, int(n))
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}

// TokenToPiece returns the text of one token as it appears inside decoded text; with
// stripLeadingSpace a leading space is dropped.
func (m *Model) TokenToPiece(token int32, stripLeadingSpace bool) (string, error) {
	h, err := m.acquire()
	if err != nil {
		return "", err
	}
	defer m.mu.RUnlock()
	b, err := tokenToPiece(h, token, stripLeadingSpace, nil)
	return string(b), err
}

// tokenToPiece appends the piece of token to dst.
func tokenToPiece(h *C.lmoe_model, token int32, strip bool, dst []byte) ([]byte, error) {
	s := C.int(0)
	if strip {
		s = 1
	}
	buf := make([]byte, 64)
	for {
		var n C.size_t
		err := call(func() C.lmoe_status {
			return C.lmoe_token_to_piece(h, C.lmoe_token(token), s, bytePtr(buf), C.size_t(len(buf)), &n)
		})
		if e, ok := err.(*Error); ok && e.Status == int(StatusBufferTooSmall) && int(n) > len(buf) {
			buf = make([]byte, int(n))
			continue
		}
		if err != nil {
			return dst, err
		}
		return append(dst, buf[:n]...), nil
	}
}

// ---------------------------------------------------------------------------------------------
// Context
// ---------------------------------------------------------------------------------------------

// ContextOptions are the options of NewContext; the zero value gives the library defaults.
type ContextOptions struct {
	NCtx     int // KV cache size in tokens; 0 = the model's training context
	NThreads int // evaluation threads, caller included; 0 = one per online CPU
	NBatch   int // most tokens per forward pass; 0 = 512
}

// Context is one sequence's KV cache, scratch buffers and thread pool. Use it from one goroutine
// at a time.
type Context struct {
	mu     sync.Mutex
	h      *C.lmoe_context
	model  *Model
	nVocab int
}

// NewContext creates a context for m (which must have weights and stay open while the context is).
func NewContext(m *Model, opts ContextOptions) (*Context, error) {
	if m == nil {
		return nil, errorf(StatusInvalidArgument, "NewContext: nil model")
	}
	if opts.NCtx < 0 || opts.NThreads < 0 || opts.NBatch < 0 ||
		int64(opts.NCtx) > 0xffffffff || int64(opts.NBatch) > 0xffffffff || int64(opts.NThreads) > 0x7fffffff {
		return nil, errorf(StatusInvalidArgument, "NewContext: options out of range: %+v", opts)
	}
	mh, err := m.acquire()
	if err != nil {
		return nil, err
	}
	defer m.mu.RUnlock()
	var p C.lmoe_context_params
	if st := C.lmoe_context_default_params(&p, C.sizeof_lmoe_context_params); st != C.LMOE_OK {
		return nil, errorf(Status(st), "lmoe_context_default_params failed")
	}
	p.n_ctx = C.uint32_t(opts.NCtx)
	p.n_threads = C.int32_t(opts.NThreads)
	p.n_batch = C.uint32_t(opts.NBatch)
	var h *C.lmoe_context
	if err := call(func() C.lmoe_status { return C.lmoe_context_create(mh, &p, &h) }); err != nil {
		return nil, err
	}
	atomic.AddInt64(&m.nContexts, 1)
	c := &Context{h: h, model: m, nVocab: m.info.NVocab}
	runtime.SetFinalizer(c, func(c *Context) { c.Close() })
	return c, nil
}

// Close frees the context; later calls do nothing.
func (c *Context) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.h == nil {
		return nil
	}
	C.lmoe_context_free(c.h)
	c.h = nil
	atomic.AddInt64(&c.model.nContexts, -1)
	runtime.SetFinalizer(c, nil)
	return nil
}

// acquire locks the context and returns its handle, or an error if it is closed.
func (c *Context) acquire() (*C.lmoe_context, error) {
	c.mu.Lock()
	if c.h == nil {
		c.mu.Unlock()
		return nil, errClosedContext
	}
	return c.h, nil
}

// Model returns the model the context was created from.
func (c *Context) Model() *Model { return c.model }

// Eval runs the model on tokens after what the context holds and computes the logits of the last
// one. If they do not fit, it returns StatusContextFull and changes nothing.
func (c *Context) Eval(tokens []int32) error {
	h, err := c.acquire()
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	return call(func() C.lmoe_status { return C.lmoe_eval(h, tokenPtr(tokens), C.size_t(len(tokens))) })
}

// Logits returns a copy of the logits of the last successful Eval, or nil if there is none.
func (c *Context) Logits() []float32 {
	h, err := c.acquire()
	if err != nil {
		return nil
	}
	defer c.mu.Unlock()
	p := C.lmoe_logits(h)
	if p == nil {
		return nil
	}
	out := make([]float32, c.nVocab)
	copy(out, unsafe.Slice((*float32)(unsafe.Pointer(p)), c.nVocab))
	return out
}

// Reset empties the KV cache and sets the expert counts to zero.
func (c *Context) Reset() {
	if h, err := c.acquire(); err == nil {
		C.lmoe_context_reset(h)
		c.mu.Unlock()
	}
}

// Truncate rolls the KV cache back to its first n tokens.
func (c *Context) Truncate(n int) error {
	if n < 0 || int64(n) > 0xffffffff {
		return errorf(StatusInvalidArgument, "Truncate: n out of range: %d", n)
	}
	h, err := c.acquire()
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	return call(func() C.lmoe_status { return C.lmoe_context_truncate(h, C.uint32_t(n)) })
}

// NTokens returns the number of tokens in the KV cache (0 if closed).
func (c *Context) NTokens() int {
	h, err := c.acquire()
	if err != nil {
		return 0
	}
	defer c.mu.Unlock()
	return int(C.lmoe_context_n_tokens(h))
}

// NCtx returns the KV cache capacity in tokens (0 if closed).
func (c *Context) NCtx() int {
	h, err := c.acquire()
	if err != nil {
		return 0
	}
	defer c.mu.Unlock()
	return int(C.lmoe_context_n_ctx(h))
}

// ExpertCounts returns how often each expert was selected, counts[layer][expert], since the
// context was created or its counts were reset. A dense model gives StatusMisuse.
func (c *Context) ExpertCounts() ([][]uint64, error) {
	h, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	nl, ne := c.model.info.NLayer, c.model.info.NExpert
	flat := make([]uint64, nl*ne)
	// a dense model has no counts; the library still wants a non-NULL pointer to say so
	var dummy [1]uint64
	ptr := (*C.uint64_t)(unsafe.Pointer(&dummy[0]))
	if len(flat) > 0 {
		ptr = (*C.uint64_t)(unsafe.Pointer(&flat[0]))
	}
	if err := call(func() C.lmoe_status {
		return C.lmoe_context_expert_counts(h, ptr, C.size_t(len(flat)))
	}); err != nil {
		return nil, err
	}
	out := make([][]uint64, nl)
	for l := range out {
		out[l] = flat[l*ne : (l+1)*ne : (l+1)*ne]
	}
	return out, nil
}

// ResetExpertCounts sets every expert selection count to zero (the KV cache is kept).
func (c *Context) ResetExpertCounts() {
	if h, err := c.acquire(); err == nil {
		C.lmoe_context_reset_expert_counts(h)
		c.mu.Unlock()
	}
}
