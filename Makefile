# tapstream: `make demo` runs the main job on this host; `make test` runs the tests.

GO            ?= go
BIN           := bin/tapstream
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
FUZZTIME      ?= 30s
# go test minimises each new interesting input for up to 60 s by default,
# which took whole 10 s runs of the codec targets (0 execs/s after 3 s).
FUZZMINIMIZETIME ?= 1s

.PHONY: all build deps demo test unit e2e lint fuzz proto clean bench bench-quick bench-deps

all: build

build:
	$(GO) build -o $(BIN) ./cmd/tapstream

# System packages (libpcap-dev, tshark, tcpdump, iproute2), installed with apt-get when missing.
deps:
	./scripts/deps.sh

demo: deps build
	./scripts/demo.sh

test: deps lint unit e2e

# Both print the skipped tests at the end (scripts/gotest.sh); with
# TAPSTREAM_TEST_STRICT=1 (CI) a test that would skip fails instead.
unit:
	GO=$(GO) TESTLOG=unit ./scripts/gotest.sh -race -count=1 ./internal/... ./scripts/...

e2e:
	GO=$(GO) TESTLOG=e2e ./scripts/gotest.sh -count=1 -timeout 10m ./e2e/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# Native fuzzing of every decoder that reads agent input (and the agent's
# own file and spool readers), FUZZTIME each. Seed corpora live in each
# package's testdata/fuzz and run with every `go test`.
FUZZ_TARGETS := \
	FuzzAgentMessage:./internal/collector \
	FuzzUnmarshal:./internal/wirecodec \
	FuzzValidate:./internal/wire \
	FuzzParseToken:./internal/auth \
	FuzzSanitizeName:./internal/source \
	FuzzScan:./internal/spool \
	FuzzPcapReader:./internal/pcapfile \
	FuzzReader:./internal/pcapfile \
	FuzzString:./internal/termsafe

fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  name=$${t%%:*}; pkg=$${t#*:}; \
	  echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg || exit 1; \
	done

# Benchmarks against tcpdump, socat and tcpreplay, side by side; writes
# bench/results.md and bench/loss.png. Needs root.
bench-deps:
	./scripts/deps.sh tcpreplay socat gnuplot-nox

bench: bench-deps
	$(GO) run ./bench -out bench

# A small run that checks the harness works (CI); its numbers are not the
# targets'. Writes bench/out/results-quick.md.
bench-quick: bench-deps
	$(GO) run ./bench -quick -out bench/out

# Regenerate the protocol's Go code (committed) from proto/.
proto:
	GOBIN=$(CURDIR)/bin $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(CURDIR)/bin $(GO) install $(PROTOC_GEN_GRPC)
	PATH=$(CURDIR)/bin:$$PATH protoc --go_out=. --go_opt=paths=source_relative \
	  --go-grpc_out=. --go-grpc_opt=paths=source_relative proto/tapstream/v1/tapstream.proto

clean:
	rm -rf bin
