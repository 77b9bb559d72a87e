# shoal — a Matrix homeserver that scales out by adding nodes.
GO       ?= go
BIN      := bin/shoal
PKGS     := ./...
# The race detector slows actors and bbolt several-fold; tests are written
# for that and stay well inside CI's budget.
TESTFLAGS ?= -race -timeout 20m
FUZZTIME ?= 15s

.PHONY: all build run test test-go test-fuzz bench lint proto clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/shoal
	$(GO) build -o bin/shoalbench ./cmd/shoalbench

# One node with embedded defaults: server name localhost, http://127.0.0.1:8008,
# https://127.0.0.1:8448 and HTTP/3 (self-signed), metrics on 127.0.0.1:9008,
# data under ./shoal-data, registration open (loopback only).
run:
	$(GO) build -o $(BIN) ./cmd/shoal
	./$(BIN) serve

test: test-go test-fuzz

test-go:
	$(GO) test $(TESTFLAGS) $(PKGS)
	# The in-process cluster tests start several nodes in one process, whose
	# gRPC transports race on grpc-go's global logger: they skip themselves
	# under -race and run here without it. (The multi-process cluster test
	# above runs race-enabled nodes.)
	$(GO) test -timeout 10m -count 1 -run '^TestCluster' ./cluster

# A short run of each fuzzer on top of its committed corpus; run longer by
# hand with FUZZTIME=10m.
test-fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzCanonicalJSON$$' -fuzztime $(FUZZTIME) ./eventgraph
	$(GO) test -run '^$$' -fuzz '^FuzzParseEvent$$' -fuzztime $(FUZZTIME) ./eventgraph
	$(GO) test -run '^$$' -fuzz '^FuzzThumbnail$$' -fuzztime $(FUZZTIME) ./actors

# Go benchmarks of the hot paths (federation: inbound PDUs, a send_join of a
# 10,000-member room, fan-out to 50 destinations), then the load tool (cmd/shoalbench), which
# starts a fresh node from bin/shoal and drives it over HTTP. To compare with
# Dendrite in the same run: GOFLAGS= go install
# github.com/matrix-org/dendrite/cmd/{dendrite,generate-config,generate-keys}@v0.13.8
# and make bench BENCHFLAGS="-dendrite $$(go env GOPATH)/bin/dendrite".
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./eventgraph ./storage
	$(GO) test -run '^$$' -bench . -benchtime 3s ./cluster
	$(GO) test -run '^$$' -bench 'Fed' -benchtime 20x -count 3 ./actors ./gateway
	./bin/shoalbench -shoal ./bin/shoal $(BENCHFLAGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# Regenerate the committed protobuf code (actor and cluster messages). Needs
# protoc (Debian: protobuf-compiler) and protoc-gen-go (go install
# google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12).
proto:
	cd actors/pb && PATH="$$PATH:$$($(GO) env GOPATH)/bin" protoc --go_out=. --go_opt=paths=source_relative *.proto
	cd cluster/clusterpb && PATH="$$PATH:$$($(GO) env GOPATH)/bin" protoc --go_out=. --go_opt=paths=source_relative cluster.proto

clean:
	rm -rf bin
