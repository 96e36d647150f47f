module envproxy.dev/go

go 1.19
