// Package llamamoe is a Go binding (cgo) of libllamamoe, an embeddable inference library for
// LLaMA and mixture-of-experts LLaMA models stored as GGUF files. It wraps the C API declared in
// include/llamamoe.h.
//
// Typical use:
//
//	m, err := llamamoe.Load("stories260K.gguf")
//	if err != nil { ... }
//	defer m.Close()
//	ctx, err := llamamoe.NewContext(m, llamamoe.ContextOptions{})
//	if err != nil { ... }
//	defer ctx.Close()
//	text, err := ctx.Generate("Once upon a time", llamamoe.GenerateOptions{MaxTokens: 64})
//
// # Threading
//
// A Model is immutable once loaded and may be shared by any number of goroutines, each with its
// own Context. A Context (and a Generator made from it) must be used by one goroutine at a time;
// calls on one Context from several goroutines are serialised by a mutex, so they are memory-safe,
// but interleaving them makes no sense (they share one KV cache).
//
// # Errors
//
// Failing calls return an *Error carrying the library's status code and the detail text of
// lmoe_last_error (read on the same OS thread as the failing call). errors.Is(err, ErrIO) and
// the other sentinels compare status codes only.
//
// # Lifetime
//
// Close releases the C memory and may be called any number of times. A Model cannot be closed
// while Contexts created from it are open (Close then returns an *Error with StatusMisuse). Objects
// that become unreachable without Close are released by finalizers, but relying on that keeps
// memory-mapped files and threads alive for longer than necessary.
//
// # Building and linking
//
// The package links with -lllamamoe and finds llamamoe.h in ../../include of this folder. The
// library directory comes from the environment, e.g.
//
//	CGO_LDFLAGS=-L/path/to/build LD_LIBRARY_PATH=/path/to/build go test ./...
package llamamoe
