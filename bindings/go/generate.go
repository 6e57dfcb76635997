package llamamoe

/*
#include <stdint.h>
#include <stdlib.h>
#include "llamamoe.h"

// Implemented in Go (callbacks.go, //export). The prototypes must match cgo's _cgo_export.h.
extern int lmoeGoOnText(void *user, char *text, size_t len, lmoe_token token);
extern int lmoeGoOnToken(void *user, lmoe_token token);

// C trampolines with the exact callback types of llamamoe.h.
static int lmoe_go_text_trampoline(void *user, const char *text, size_t len, lmoe_token token) {
    return lmoeGoOnText(user, (char *)text, len, token);
}
static int lmoe_go_token_trampoline(void *user, lmoe_token token) {
    return lmoeGoOnToken(user, token);
}
// Installs the trampolines; handle is a cgo.Handle, turned into the void *user here so that no
// integer-to-pointer conversion happens on the Go side.
static void lmoe_go_set_callbacks(lmoe_generate_params *p, uintptr_t handle) {
    p->on_text = lmoe_go_text_trampoline;
    p->on_token = lmoe_go_token_trampoline;
    p->user = (void *)handle;
}
*/
import "C"

import (
	"bytes"
	"math"
	"runtime"
	"runtime/cgo"
	"unicode/utf8"
	"unsafe"
)

// StopReason says why generation stopped (lmoe_stop_reason).
type StopReason int

// Stop reasons.
const (
	StopNone      StopReason = C.LMOE_STOP_NONE       // did not stop normally (an error)
	StopEOS       StopReason = C.LMOE_STOP_EOS        // the model produced end-of-sequence
	StopBOS       StopReason = C.LMOE_STOP_BOS        // the model produced BOS and the file says to stop on it
	StopString    StopReason = C.LMOE_STOP_STRING     // the text produced a stop string
	StopMaxTokens StopReason = C.LMOE_STOP_MAX_TOKENS // MaxTokens tokens were produced
	StopCallback  StopReason = C.LMOE_STOP_CALLBACK   // OnText asked to stop
)

func (r StopReason) String() string {
	switch r {
	case StopNone:
		return "none"
	case StopEOS:
		return "eos"
	case StopBOS:
		return "bos"
	case StopString:
		return "stop string"
	case StopMaxTokens:
		return "max tokens"
	case StopCallback:
		return "callback"
	}
	return "unknown"
}

// GenerateOptions configure Generate and NewGenerator. The zero value is usable: greedy decoding
// (Temperature 0) of up to 256 tokens with BOS first, and every other sampling stage off. For the
// library's (llama2.c run.c's) defaults start from DefaultGenerateOptions().
type GenerateOptions struct {
	MaxTokens     int      // tokens to sample at most; 0 = 256; negative is an error
	NoBOS         bool     // do not put BOS before the prompt of an empty context
	Stop          []string // stop strings (not included in the output; must not be empty)
	Temperature   float32  // 0 = greedy; must be finite and >= 0
	TopK          int      // 0 = off
	TopP          float32  // 0 or 1 = off; else 0 < TopP < 1
	MinP          float32  // 0 = off
	RepeatPenalty float32  // 0 or 1 = off
	RepeatLastN   int      // tokens of history the penalty looks at (0 with the penalty off)
	Seed          uint64   // RNG seed; 0 = a fixed nonzero constant

	// OnText, if set, receives the text as it becomes final (pieces never split a UTF-8
	// character). Return true to stop generation (StopCallback). Generate only.
	OnText func(piece string) (stop bool)
}

// DefaultGenerateOptions returns the library's defaults: 256 tokens, temperature 1, top-p 0.9,
// repetition penalty off (history 64), seed 42.
func DefaultGenerateOptions() GenerateOptions {
	var sp C.lmoe_sampler_params
	C.lmoe_sampler_default_params(&sp, C.sizeof_lmoe_sampler_params)
	return GenerateOptions{
		MaxTokens:     256,
		Temperature:   float32(sp.temperature),
		TopK:          int(sp.top_k),
		TopP:          float32(sp.top_p),
		MinP:          float32(sp.min_p),
		RepeatPenalty: float32(sp.repeat_penalty),
		RepeatLastN:   int(sp.repeat_last_n),
		Seed:          uint64(sp.seed),
	}
}

func (o *GenerateOptions) maxTokens() (int, error) {
	switch {
	case o.MaxTokens < 0 || o.MaxTokens > math.MaxInt32:
		return 0, errorf(StatusInvalidArgument, "MaxTokens must be in [0, %d], got %d", math.MaxInt32, o.MaxTokens)
	case o.MaxTokens == 0:
		return 256, nil
	}
	return o.MaxTokens, nil
}

func (o *GenerateOptions) checkStops() error {
	for _, s := range o.Stop {
		if s == "" {
			return errorf(StatusInvalidArgument, "a stop string is empty")
		}
	}
	return nil
}

// newSampler creates the lmoe_sampler for o; the library validates the values.
func (o *GenerateOptions) newSampler() (*C.lmoe_sampler, error) {
	if o.TopK < 0 || o.TopK > math.MaxInt32 || o.RepeatLastN < 0 || o.RepeatLastN > math.MaxInt32 {
		return nil, errorf(StatusInvalidArgument, "TopK and RepeatLastN must be in [0, %d]", math.MaxInt32)
	}
	var sp C.lmoe_sampler_params
	C.lmoe_sampler_default_params(&sp, C.sizeof_lmoe_sampler_params)
	sp.temperature = C.float(o.Temperature)
	sp.top_k = C.int32_t(o.TopK)
	sp.top_p = C.float(o.TopP)
	if o.TopP == 0 {
		sp.top_p = 1
	}
	sp.min_p = C.float(o.MinP)
	sp.repeat_penalty = C.float(o.RepeatPenalty)
	if o.RepeatPenalty == 0 {
		sp.repeat_penalty = 1
	}
	sp.repeat_last_n = C.int32_t(o.RepeatLastN)
	sp.seed = C.uint64_t(o.Seed)
	var s *C.lmoe_sampler
	if err := call(func() C.lmoe_status { return C.lmoe_sampler_create(&sp, &s) }); err != nil {
		return nil, err
	}
	return s, nil
}

// Completion is the result of Complete.
type Completion struct {
	Text          string
	Tokens        []int32 // sampled ids, a final EOS/BOS included
	StopReason    StopReason
	NPromptTokens int     // prompt tokens evaluated (BOS included)
	NGenerated    int     // tokens sampled
	PromptMS      float64 // wall time evaluating the prompt
	GenerateMS    float64 // wall time sampling and evaluating generated tokens
}

// Generate evaluates prompt after what the context holds and samples text with lmoe_generate;
// it returns the generated text (without the prompt). See Complete for the details.
func (c *Context) Generate(prompt string, opts GenerateOptions) (string, error) {
	r, err := c.Complete(prompt, opts)
	return r.Text, err
}

// genState is the Go state reached from the C callbacks through a cgo.Handle.
type genState struct {
	onText  func(string) bool
	text    []byte
	pending []byte // an incomplete UTF-8 character held back from onText
	tokens  []int32
	stopped bool        // onText asked to stop
	panicV  interface{} // a panic of onText, re-raised after lmoe_generate returns
	paniced bool
}

// Complete is Generate returning the details of the run. On an error the Completion holds what
// was generated before it (e.g. when the context fills up, StatusContextFull).
func (c *Context) Complete(prompt string, opts GenerateOptions) (Completion, error) {
	maxTokens, err := opts.maxTokens()
	if err != nil {
		return Completion{}, err
	}
	if err := opts.checkStops(); err != nil {
		return Completion{}, err
	}
	h, err := c.acquire()
	if err != nil {
		return Completion{}, err
	}
	defer c.mu.Unlock()
	smp, err := opts.newSampler()
	if err != nil {
		return Completion{}, err
	}
	defer C.lmoe_sampler_free(smp)

	var gp C.lmoe_generate_params
	C.lmoe_generate_default_params(&gp, C.sizeof_lmoe_generate_params)
	gp.max_tokens = C.int32_t(maxTokens)
	gp.add_bos = 1
	if opts.NoBOS {
		gp.add_bos = 0
	}
	if n := len(opts.Stop); n > 0 {
		arr := unsafe.Slice((**C.char)(C.malloc(C.size_t(n)*C.size_t(unsafe.Sizeof((*C.char)(nil))))), n)
		for i, s := range opts.Stop {
			arr[i] = C.CString(s)
		}
		defer func() {
			for _, p := range arr {
				C.free(unsafe.Pointer(p))
			}
			C.free(unsafe.Pointer(&arr[0]))
		}()
		gp.stop_strings = &arr[0]
		gp.n_stop_strings = C.size_t(n)
	}
	st := &genState{onText: opts.OnText}
	handle := cgo.NewHandle(st)
	defer handle.Delete()
	C.lmoe_go_set_callbacks(&gp, C.uintptr_t(handle))

	p := []byte(prompt)
	var res C.lmoe_generate_result
	err = call(func() C.lmoe_status {
		return C.lmoe_generate(h, smp, bytePtr(p), C.size_t(len(p)), &gp, &res, C.sizeof_lmoe_generate_result)
	})
	if st.paniced {
		panic(st.panicV)
	}
	st.flush() // also on an error: what was generated before it has been produced
	return Completion{
		Text:          string(st.text),
		Tokens:        st.tokens,
		StopReason:    StopReason(res.stop_reason),
		NPromptTokens: int(res.n_prompt_tokens),
		NGenerated:    int(res.n_generated),
		PromptMS:      float64(res.prompt_ms),
		GenerateMS:    float64(res.generate_ms),
	}, err
}

// onTextBytes handles one on_text call; it returns true to stop generation.
func (st *genState) onTextBytes(b []byte) bool {
	st.text = append(st.text, b...)
	if st.onText == nil || st.stopped {
		return st.stopped
	}
	st.pending = append(st.pending, b...)
	n := completeUTF8(st.pending)
	if n == 0 {
		return false
	}
	piece := string(st.pending[:n])
	st.pending = append(st.pending[:0], st.pending[n:]...)
	st.stopped = st.callOnText(piece)
	return st.stopped
}

func (st *genState) flush() {
	if st.onText != nil && !st.stopped && len(st.pending) > 0 {
		st.callOnText(string(st.pending))
		st.pending = nil
	}
}

func (st *genState) callOnText(piece string) (stop bool) {
	defer func() {
		if r := recover(); r != nil {
			st.panicV, st.paniced, stop = r, true, true
		}
	}()
	return st.onText(piece)
}

// completeUTF8 returns the length of the longest prefix of b that does not end inside an
// incomplete (but so far valid) UTF-8 sequence.
func completeUTF8(b []byte) int {
	n := len(b)
	for i := n - 1; i >= 0 && i >= n-3; i-- {
		if !utf8.RuneStart(b[i]) {
			continue
		}
		if !utf8.FullRune(b[i:]) {
			return i
		}
		break
	}
	return n
}

// ---------------------------------------------------------------------------------------------
// Generator: step-wise generation over lmoe_eval and the sampler
// ---------------------------------------------------------------------------------------------

// Generator produces generated text piece by piece; create it with NewGenerator and call Next
// until it reports false. It follows lmoe_generate's rules: stops at EOS, at BOS when the model
// says so, at a stop string (which is not returned), or after MaxTokens; text that could begin a
// stop string or ends inside a UTF-8 character is held back until decided. Use it from the
// goroutine that uses its Context, and do not use the Context for anything else until the
// Generator is done; Close frees its sampler (also done when Next reports the end).
type Generator struct {
	ctx       *Context
	smp       *C.lmoe_sampler
	prompt    []int32
	maxTokens int
	stops     [][]byte
	i         int // tokens sampled so far
	prev      int32
	pending   []byte
	tokens    []int32
	reason    StopReason
	done      bool
	err       error
	out       []byte // text ready to be returned at the end
}

// NewGenerator tokenizes prompt (BOS first unless opts.NoBOS or the context holds tokens) and
// prepares a Generator; the prompt is evaluated by the first Next. opts.OnText is ignored.
func (c *Context) NewGenerator(prompt string, opts GenerateOptions) (*Generator, error) {
	maxTokens, err := opts.maxTokens()
	if err != nil {
		return nil, err
	}
	if err := opts.checkStops(); err != nil {
		return nil, err
	}
	h, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	mh, err := c.model.acquire()
	if err != nil {
		return nil, err
	}
	defer c.model.mu.RUnlock()
	ids, err := tokenize(mh, []byte(prompt), !opts.NoBOS && C.lmoe_context_n_tokens(h) == 0)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 && C.lmoe_logits(h) == nil {
		return nil, errorf(StatusMisuse, "NewGenerator: the prompt is empty, BOS is off and the "+
			"context holds no evaluated tokens: there is nothing to generate from")
	}
	smp, err := opts.newSampler()
	if err != nil {
		return nil, err
	}
	g := &Generator{ctx: c, smp: smp, prompt: ids, maxTokens: maxTokens, prev: -1, reason: StopNone}
	for _, s := range opts.Stop {
		g.stops = append(g.stops, []byte(s))
	}
	runtime.SetFinalizer(g, (*Generator).Close)
	return g, nil
}

// Tokens returns the ids sampled so far (a final EOS/BOS included).
func (g *Generator) Tokens() []int32 { return g.tokens }

// StopReason returns why generation stopped; StopNone until it has ended (or after an error).
func (g *Generator) StopReason() StopReason { return g.reason }

// Close stops the generation and frees its sampler; later calls do nothing.
func (g *Generator) Close() error {
	if g.smp != nil {
		C.lmoe_sampler_free(g.smp)
		g.smp = nil
		runtime.SetFinalizer(g, nil)
	}
	g.done = true
	return nil
}

func (g *Generator) finish(reason StopReason, err error) {
	g.reason, g.err = reason, err
	g.Close()
}

// Next returns the next non-empty piece of text and true, or "", false when generation has ended
// (with the error that ended it, if any).
func (g *Generator) Next() (string, bool, error) {
	for {
		if len(g.out) > 0 {
			s := string(g.out)
			g.out = nil
			return s, true, nil
		}
		if g.done {
			err := g.err
			g.err = nil
			return "", false, err
		}
		g.step()
	}
}

// step advances by one token (or evaluates the prompt), moving released text into g.out.
func (g *Generator) step() {
	c := g.ctx
	h, err := c.acquire()
	if err != nil {
		g.finish(StopNone, err)
		return
	}
	defer c.mu.Unlock()
	mh, err := c.model.acquire()
	if err != nil {
		g.finish(StopNone, err)
		return
	}
	defer c.model.mu.RUnlock()

	if g.prompt != nil {
		ids := g.prompt
		g.prompt = nil
		if len(ids) > 0 {
			if err := call(func() C.lmoe_status { return C.lmoe_eval(h, tokenPtr(ids), C.size_t(len(ids))) }); err != nil {
				g.finish(StopNone, err)
				return
			}
			for _, t := range ids {
				C.lmoe_sampler_accept(g.smp, C.lmoe_token(t))
			}
			g.prev = ids[len(ids)-1]
		}
	}
	if g.i >= g.maxTokens {
		g.release(true)
		g.finish(StopMaxTokens, nil)
		return
	}
	var tok C.lmoe_token
	if err := call(func() C.lmoe_status {
		return C.lmoe_sampler_sample(g.smp, C.lmoe_logits(h), C.int32_t(c.nVocab), &tok)
	}); err != nil {
		g.finish(StopNone, err)
		return
	}
	t := int32(tok)
	g.i++
	g.tokens = append(g.tokens, t)
	C.lmoe_sampler_accept(g.smp, tok)
	m := c.model
	if t == m.eos {
		g.release(true)
		g.finish(StopEOS, nil)
		return
	}
	if t == m.bos && m.stopOnBOS {
		g.release(true)
		g.finish(StopBOS, nil)
		return
	}
	g.pending, err = tokenToPiece(mh, t, g.prev >= 0 && g.prev == m.bos, g.pending)
	if err != nil {
		g.finish(StopNone, err)
		return
	}
	if at := g.findStop(); at >= 0 {
		g.pending = g.pending[:at]
		g.release(true)
		g.finish(StopString, nil)
		return
	}
	g.release(false)
	if g.i == g.maxTokens {
		g.release(true)
		g.finish(StopMaxTokens, nil)
		return
	}
	one := []int32{t}
	if err := call(func() C.lmoe_status { return C.lmoe_eval(h, tokenPtr(one), 1) }); err != nil {
		g.finish(StopNone, err)
		return
	}
	g.prev = t
}

// findStop returns the earliest position of a stop string in pending, or -1.
func (g *Generator) findStop() int {
	at := -1
	for _, s := range g.stops {
		if i := bytes.Index(g.pending, s); i >= 0 && (at < 0 || i < at) {
			at = i
		}
	}
	return at
}

// release moves the decided part of pending (all of it if final) to out.
func (g *Generator) release(final bool) {
	n := len(g.pending)
	if !final {
		// hold back the longest suffix that is a proper prefix of a stop string
		keep := 0
		for _, s := range g.stops {
			for k := len(s) - 1; k > keep; k-- {
				if k <= len(g.pending) && bytes.Equal(g.pending[len(g.pending)-k:], s[:k]) {
					keep = k
					break
				}
			}
		}
		n = completeUTF8(g.pending[:len(g.pending)-keep])
	}
	g.out = append(g.out, g.pending[:n]...)
	g.pending = append(g.pending[:0], g.pending[n:]...)
}

// Text runs the generation to its end and returns the remaining text joined.
func (g *Generator) Text() (string, error) {
	var b []byte
	for {
		s, ok, err := g.Next()
		if !ok {
			return string(b), err
		}
		b = append(b, s...)
	}
}
