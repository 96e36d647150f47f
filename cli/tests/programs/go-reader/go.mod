module envproxy.dev/tests/go-reader

go 1.19

require envproxy.dev/go v0.0.0

replace envproxy.dev/go => ../../../../hooks/go
