package llamamoe

// Tests on stories260K, converted here with llamamoe-convert.
//
// Environment:
//
//	LLAMAMOE_CONVERT      the llamamoe-convert tool
//	LLAMAMOE_TEST_MODELS  folder with stories260K.bin, tok512.bin, stories260K-reference.json
//	CGO_LDFLAGS=-L<dir of libllamamoe>, LD_LIBRARY_PATH=<same dir> (to build and run)
//
// Missing ones skip the tests, except under CI=true, where they fail.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

type refRun struct {
	Name         string  `json:"name"`
	Prompt       string  `json:"prompt"`
	PromptIDs    []int32 `json:"prompt_ids"`
	IDs          []int32 `json:"ids"`
	StoppedOnBOS bool    `json:"stopped_on_bos"`
	Stdout       string  `json:"stdout"`
}

var setup struct {
	once    sync.Once
	missing string // why the tests cannot run (skip, or fail under CI=true)
	err     error  // a failure of the setup itself
	tmp     string
	gguf    string
	moe     string
	runs    []refRun
}

func TestMain(m *testing.M) {
	code := m.Run()
	if setup.tmp != "" {
		os.RemoveAll(setup.tmp)
	}
	os.Exit(code)
}

func convert(args ...string) error {
	out, err := exec.Command(os.Getenv("LLAMAMOE_CONVERT"), args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("llamamoe-convert %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func doSetup() {
	models, conv := os.Getenv("LLAMAMOE_TEST_MODELS"), os.Getenv("LLAMAMOE_CONVERT")
	if models == "" || conv == "" {
		setup.missing = "LLAMAMOE_TEST_MODELS or LLAMAMOE_CONVERT is not set"
		return
	}
	for _, n := range []string{"stories260K.bin", "tok512.bin", "stories260K-reference.json"} {
		if _, err := os.Stat(filepath.Join(models, n)); err != nil {
			setup.missing = fmt.Sprintf("missing in %s: %s", models, n)
			return
		}
	}
	tmp, err := os.MkdirTemp("", "llamamoe-go-")
	if err != nil {
		setup.err = err
		return
	}
	setup.tmp = tmp
	setup.gguf = filepath.Join(tmp, "stories260K.gguf")
	setup.moe = filepath.Join(tmp, "stories260K-moe.gguf")
	if setup.err = convert("llama2c", filepath.Join(models, "stories260K.bin"),
		filepath.Join(models, "tok512.bin"), "-o", setup.gguf); setup.err != nil {
		return
	}
	if setup.err = convert("moefy", setup.gguf, "-o", setup.moe, "--experts", "4", "--top-k", "2"); setup.err != nil {
		return
	}
	data, err := os.ReadFile(filepath.Join(models, "stories260K-reference.json"))
	if err != nil {
		setup.err = err
		return
	}
	setup.err = json.Unmarshal(data, &setup.runs)
}

// need runs the setup once and skips (fails under CI=true) if the environment is incomplete.
func need(t *testing.T) {
	t.Helper()
	setup.once.Do(doSetup)
	if setup.missing != "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true and " + setup.missing)
		}
		t.Skip(setup.missing)
	}
	if setup.err != nil {
		t.Fatal(setup.err)
	}
}

func run(t *testing.T, prefix string) refRun {
	t.Helper()
	for _, r := range setup.runs {
		if strings.HasPrefix(r.Name, prefix) {
			return r
		}
	}
	t.Fatalf("no reference run named %q...", prefix)
	return refRun{}
}

// greedyWant is run.c's stdout of the greedy no-prompt run without its final newline.
func greedyWant(t *testing.T) string {
	r := run(t, "greedy, no prompt")
	if !strings.HasSuffix(r.Stdout, "\n") || len(r.IDs)-len(r.PromptIDs) != 256 {
		t.Fatalf("unexpected reference run %q", r.Name)
	}
	return strings.TrimSuffix(r.Stdout, "\n")
}

func load(t *testing.T, path string) *Model {
	t.Helper()
	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func newCtx(t *testing.T, m *Model, opts ContextOptions) *Context {
	t.Helper()
	c, err := NewContext(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestVersion(t *testing.T) {
	if Version() != HeaderVersion {
		t.Fatalf("library %s, header %s", Version(), HeaderVersion)
	}
}

func TestInfoAndTokenizer(t *testing.T) {
	need(t)
	m := load(t, setup.gguf)
	info := m.Info()
	if info.Architecture != "llama" || info.NVocab != 512 || info.NCtxTrain != 512 ||
		info.NLayer != 5 || info.NEmbd != 64 || info.NHeadKV != 4 || info.NExpert != 0 ||
		info.NParams != 260032 || !info.HasWeights {
		t.Fatalf("info: %+v", info)
	}
	if m.BOS() != 1 || m.EOS() != 2 || !m.StopOnBOS() {
		t.Fatalf("bos %d eos %d stop_on_bos %v", m.BOS(), m.EOS(), m.StopOnBOS())
	}
	if v, err := m.Meta("general.architecture"); err != nil || v != "llama" {
		t.Fatalf("Meta: %q, %v", v, err)
	}
	if _, err := m.Meta("no.such.key"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Meta of an absent key: %v", err)
	}
	for _, r := range setup.runs {
		if r.Prompt == "" {
			continue
		}
		ids, err := m.Tokenize(r.Prompt, true)
		if err != nil || !reflect.DeepEqual(ids, r.PromptIDs) {
			t.Fatalf("%s: Tokenize = %v, %v; want %v", r.Name, ids, err, r.PromptIDs)
		}
		text, err := m.Detokenize(ids)
		if err != nil || text != r.Prompt {
			t.Fatalf("%s: Detokenize = %q, %v", r.Name, text, err)
		}
	}
	if ids, err := m.Tokenize("", false); err != nil || len(ids) != 0 {
		t.Fatalf("Tokenize(\"\") = %v, %v", ids, err)
	}
	long := strings.Repeat("Lily and Tom went to the park. ", 200)
	ids, err := m.Tokenize(long, false)
	if err != nil {
		t.Fatal(err)
	}
	if text, err := m.Detokenize(ids); err != nil || text != long {
		t.Fatalf("long round trip: %v", err)
	}
	if _, err := m.Detokenize([]int32{100000}); err == nil {
		t.Fatal("Detokenize of an out-of-range id did not fail")
	}
}

func TestGreedyMatchesReference(t *testing.T) {
	need(t)
	want := greedyWant(t)
	m := load(t, setup.gguf)
	c := newCtx(t, m, ContextOptions{NThreads: 1})
	var streamed strings.Builder
	r, err := c.Complete("", GenerateOptions{MaxTokens: 256, Temperature: 0,
		OnText: func(p string) bool { streamed.WriteString(p); return false }})
	if err != nil {
		t.Fatal(err)
	}
	if r.Text != want || streamed.String() != want {
		t.Fatalf("got %q\nwant %q", r.Text, want)
	}
	ref := run(t, "greedy, no prompt")
	if r.StopReason != StopMaxTokens || r.NGenerated != 256 || r.NPromptTokens != 1 ||
		!reflect.DeepEqual(append([]int32{1}, r.Tokens...), ref.IDs) {
		t.Fatalf("stop %v generated %d prompt %d tokens %v", r.StopReason, r.NGenerated, r.NPromptTokens, r.Tokens)
	}
	if n := c.NTokens(); n != 256 {
		t.Fatalf("NTokens = %d, want 256", n)
	}
	// Generate (the plain string form) after a reset gives the same text.
	c.Reset()
	if text, err := c.Generate("", GenerateOptions{MaxTokens: 256}); err != nil || text != want {
		t.Fatalf("Generate: %v\n%q", err, text)
	}
}

func TestGeneratorMatchesReference(t *testing.T) {
	need(t)
	m := load(t, setup.gguf)
	c := newCtx(t, m, ContextOptions{NThreads: 1})
	g, err := c.NewGenerator("", GenerateOptions{MaxTokens: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var b strings.Builder
	for {
		p, ok, err := g.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if p == "" {
			t.Fatal("Next returned an empty piece")
		}
		b.WriteString(p)
	}
	if b.String() != greedyWant(t) || g.StopReason() != StopMaxTokens || len(g.Tokens()) != 256 {
		t.Fatalf("stop %v, %d tokens, text %q", g.StopReason(), len(g.Tokens()), b.String())
	}
	// prompts, including one where the model stops on BOS, agree with lmoe_generate and run.c
	for _, prefix := range []string{"greedy, prompt 1", "greedy, prompt 3", "greedy, prompt 5"} {
		r := run(t, prefix)
		opts := GenerateOptions{MaxTokens: 256 + 1 - len(r.PromptIDs)}
		c.Reset()
		g, err := c.NewGenerator(r.Prompt, opts)
		if err != nil {
			t.Fatal(err)
		}
		text, err := g.Text()
		if err != nil {
			t.Fatal(err)
		}
		c.Reset()
		done, err := c.Complete(r.Prompt, opts)
		if err != nil {
			t.Fatal(err)
		}
		wantStop := StopMaxTokens
		if r.StoppedOnBOS {
			wantStop = StopBOS
		}
		if r.Prompt+text != strings.TrimSuffix(r.Stdout, "\n") || done.Text != text ||
			g.StopReason() != wantStop || done.StopReason != wantStop ||
			!reflect.DeepEqual(append(append([]int32{}, r.PromptIDs...), g.Tokens()...), r.IDs) {
			t.Fatalf("%s: stop %v/%v text %q / %q", prefix, g.StopReason(), done.StopReason, text, done.Text)
		}
	}
}

func TestStopStrings(t *testing.T) {
	need(t)
	m := load(t, setup.gguf)
	c := newCtx(t, m, ContextOptions{NThreads: 1})
	want := greedyWant(t)
	stop := "Lily"
	at := strings.Index(want, stop)
	if at < 0 {
		t.Skip("reference text has no " + stop)
	}
	opts := GenerateOptions{MaxTokens: 256, Stop: []string{stop, "zzzz"}}
	r, err := c.Complete("", opts)
	if err != nil || r.Text != want[:at] || r.StopReason != StopString {
		t.Fatalf("Complete: %v stop %v %q", err, r.StopReason, r.Text)
	}
	c.Reset()
	g, err := c.NewGenerator("", opts)
	if err != nil {
		t.Fatal(err)
	}
	if text, err := g.Text(); err != nil || text != want[:at] || g.StopReason() != StopString {
		t.Fatalf("Generator: %v stop %v %q", err, g.StopReason(), text)
	}
	if _, err := c.Generate("", GenerateOptions{Stop: []string{""}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("empty stop string: %v", err)
	}
}

func TestOnTextStop(t *testing.T) {
	need(t)
	m := load(t, setup.gguf)
	c := newCtx(t, m, ContextOptions{NThreads: 1})
	calls := 0
	r, err := c.Complete("", GenerateOptions{MaxTokens: 256, OnText: func(string) bool {
		calls++
		return calls == 3
	}})
	if err != nil || r.StopReason != StopCallback || calls != 3 || !strings.HasPrefix(greedyWant(t), r.Text) {
		t.Fatalf("%v stop %v calls %d %q", err, r.StopReason, calls, r.Text)
	}
	defer func() {
		if recover() != "boom" {
			t.Fatal("a panic in OnText was not re-raised")
		}
	}()
	c.Generate("", GenerateOptions{OnText: func(string) bool { panic("boom") }})
}

func TestBadPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no-such-model.gguf")
	m, err := Load(path)
	if m != nil || err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
	var e *Error
	if !errors.As(err, &e) || e.Status == 0 || !strings.Contains(e.Message, path) {
		t.Fatalf("error %#v", err)
	}
	if !errors.Is(err, ErrIO) || errors.Is(err, ErrBadFile) {
		t.Fatalf("errors.Is: %v", err)
	}
	// not a GGUF file
	bad := filepath.Join(t.TempDir(), "bad.gguf")
	os.WriteFile(bad, []byte("this is not a gguf file at all, not even close......"), 0o644)
	if _, err := Load(bad); !errors.As(err, &e) || e.Status == 0 || !strings.Contains(e.Message, bad) {
		t.Fatalf("bad file: %v", err)
	}
}

func TestBadParameters(t *testing.T) {
	need(t)
	m := load(t, setup.gguf)
	c := newCtx(t, m, ContextOptions{NThreads: 1})
	_, err := c.Generate("Hi", GenerateOptions{Temperature: -1})
	var e *Error
	if !errors.As(err, &e) || e.Status != int(StatusInvalidArgument) || e.Message == "" {
		t.Fatalf("temperature -1: %v", err)
	}
	if _, err := c.NewGenerator("Hi", GenerateOptions{Temperature: -1}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("NewGenerator, temperature -1: %v", err)
	}
	if _, err := c.Generate("Hi", GenerateOptions{MaxTokens: -1}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("max tokens -1: %v", err)
	}
	if _, err := c.Generate("Hi", GenerateOptions{TopP: 2}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("top-p 2: %v", err)
	}
	if err := c.Eval([]int32{100000}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Eval of a bad id: %v", err)
	}
	if _, err := NewContext(m, ContextOptions{NCtx: -1}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("NCtx -1: %v", err)
	}
	if c.NTokens() != 0 {
		t.Fatal("failed calls changed the context")
	}
}

func TestEvalLogitsAndContextFull(t *testing.T) {
	need(t)
	m := load(t, setup.gguf)
	c := newCtx(t, m, ContextOptions{NThreads: 1, NCtx: 64})
	if c.NCtx() != 64 || c.Logits() != nil {
		t.Fatalf("NCtx %d", c.NCtx())
	}
	ids, _ := m.Tokenize("Once upon a time", true)
	if err := c.Eval(ids); err != nil {
		t.Fatal(err)
	}
	logits := c.Logits()
	if len(logits) != 512 {
		t.Fatalf("%d logits", len(logits))
	}
	logits[0] = 12345 // a copy: does not change the context's
	if c.Logits()[0] == 12345 {
		t.Fatal("Logits is not a copy")
	}
	if err := c.Truncate(1); err != nil || c.NTokens() != 1 {
		t.Fatalf("Truncate: %v", err)
	}
	small := newCtx(t, m, ContextOptions{NThreads: 1, NCtx: 8})
	if err := small.Eval([]int32{3, 4, 5, 6, 7, 8, 9, 10, 11}); !errors.Is(err, ErrContextFull) {
		t.Fatalf("context full: %v", err)
	}
	if _, err := small.Generate("", GenerateOptions{MaxTokens: 20}); !errors.Is(err, ErrContextFull) {
		t.Fatalf("Generate context full: %v", err)
	}
	if _, err := c.ExpertCounts(); !errors.Is(err, ErrMisuse) {
		t.Fatalf("dense ExpertCounts: %v", err)
	}
}

func TestExpertCounts(t *testing.T) {
	need(t)
	m := load(t, setup.moe)
	info := m.Info()
	if info.NExpert != 4 || info.NExpertUsed != 2 {
		t.Fatalf("info %+v", info)
	}
	c := newCtx(t, m, ContextOptions{NThreads: 2})
	ids, _ := m.Tokenize("Once upon a time", true)
	if err := c.Eval(ids); err != nil {
		t.Fatal(err)
	}
	counts, err := c.ExpertCounts()
	if err != nil || len(counts) != info.NLayer {
		t.Fatalf("%v %v", counts, err)
	}
	for l, row := range counts {
		var sum uint64
		for _, n := range row {
			sum += n
		}
		if len(row) != 4 || sum != uint64(len(ids)*2) {
			t.Fatalf("layer %d: %v", l, row)
		}
	}
	c.ResetExpertCounts()
	counts, _ = c.ExpertCounts()
	if counts[0][0]+counts[0][1]+counts[0][2]+counts[0][3] != 0 {
		t.Fatal("ResetExpertCounts")
	}
}

func TestSharedModelTwoGoroutines(t *testing.T) {
	need(t)
	want := greedyWant(t)
	m := load(t, setup.gguf)
	var wg sync.WaitGroup
	got := make([]string, 2)
	errs := make([]error, 2)
	for i := range got {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := NewContext(m, ContextOptions{NThreads: 1})
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			for k := 0; k < 3 && errs[i] == nil; k++ {
				c.Reset()
				got[i], errs[i] = c.Generate("", GenerateOptions{MaxTokens: 256})
				if got[i] != want {
					break
				}
			}
		}(i)
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil || got[i] != want {
			t.Fatalf("goroutine %d: %v\n%q", i, errs[i], got[i])
		}
	}
}

func TestCloseIdempotentAndOrder(t *testing.T) {
	need(t)
	m, err := Load(setup.gguf)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewContext(m, ContextOptions{NThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); !errors.Is(err, ErrMisuse) {
		t.Fatalf("closing a model with an open context: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Eval([]int32{1}); !errors.Is(err, ErrMisuse) {
		t.Fatalf("Eval on a closed context: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Tokenize("x", true); !errors.Is(err, ErrMisuse) {
		t.Fatalf("Tokenize on a closed model: %v", err)
	}
	if _, err := NewContext(m, ContextOptions{}); !errors.Is(err, ErrMisuse) {
		t.Fatalf("NewContext on a closed model: %v", err)
	}
}
