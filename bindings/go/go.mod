module github.com/libllamamoe/llamamoe/bindings/go

go 1.17
