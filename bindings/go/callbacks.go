package llamamoe

/*
#include <stddef.h>
#include "llamamoe.h"
*/
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

// The C trampolines in llamamoe.go call these with the cgo.Handle of a *genState as user. This
// file has only declarations in its preamble, as cgo requires of files with //export.

//export lmoeGoOnText
func lmoeGoOnText(user unsafe.Pointer, text *C.char, n C.size_t, token C.lmoe_token) C.int {
	st := cgo.Handle(uintptr(user)).Value().(*genState)
	var b []byte
	if n > 0 {
		b = C.GoBytes(unsafe.Pointer(text), C.int(n))
	}
	if st.onTextBytes(b) {
		return 1
	}
	return 0
}

//export lmoeGoOnToken
func lmoeGoOnToken(user unsafe.Pointer, token C.lmoe_token) C.int {
	st := cgo.Handle(uintptr(user)).Value().(*genState)
	st.tokens = append(st.tokens, int32(token))
	return 0
}
