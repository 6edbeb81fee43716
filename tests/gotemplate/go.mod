module orch/tests/gotemplate

go 1.19
