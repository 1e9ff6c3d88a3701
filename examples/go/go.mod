module example.com/pipevisor-go-echo

go 1.19
