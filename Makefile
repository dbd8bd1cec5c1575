# Minions. `make help` lists the targets.
GO      ?= go
PREFIX  ?= /usr/local
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/minionsdev/minions/cli.Version=$(VERSION)
DIST    ?= dist
RELEASE := minions-$(VERSION)-linux-amd64

.PHONY: help build install release fmt lint test test-e2e bench soak clean

help: ## show this help
	@awk 'BEGIN{FS=":.*## "} /^[a-z-]+:.*## /{printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/minions (lean: the VM commands), bin/minions-daemon (serve, node, init, image, ...), the static guest agent bin/minions-agent and the per-VM helper bin/minions-relay
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/minions-agent ./guestagent/cmd/minions-agent
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/minions-relay ./vm/hypervisor/qemu/relay/cmd/minions-relay
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/minions .
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/minions-daemon ./cmd/minions-daemon

install: build ## install to $(PREFIX)/bin and $(PREFIX)/lib/minions
	install -D -m 0755 bin/minions $(PREFIX)/bin/minions
	install -D -m 0755 bin/minions-agent $(PREFIX)/lib/minions/minions-agent
	install -D -m 0755 bin/minions-relay $(PREFIX)/lib/minions/minions-relay
	install -D -m 0755 bin/minions-daemon $(PREFIX)/lib/minions/minions-daemon

release: ## dist/minions-VERSION-linux-amd64.tar.gz: static binaries, systemd units, install.sh
	rm -rf $(DIST)/$(RELEASE) $(DIST)/$(RELEASE).tar.gz
	mkdir -p $(DIST)/$(RELEASE)
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(DIST)/$(RELEASE)/minions-agent ./guestagent/cmd/minions-agent
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(DIST)/$(RELEASE)/minions-relay ./vm/hypervisor/qemu/relay/cmd/minions-relay
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(DIST)/$(RELEASE)/minions .
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(DIST)/$(RELEASE)/minions-daemon ./cmd/minions-daemon
	$(DIST)/$(RELEASE)/minions-daemon units --exe @PREFIX@/bin/minions --dir $(DIST)/$(RELEASE)/systemd >/dev/null
	install -m 0755 scripts/install.sh $(DIST)/$(RELEASE)/install.sh
	tar -C $(DIST) -czf $(DIST)/$(RELEASE).tar.gz $(RELEASE)
	rm -rf $(DIST)/$(RELEASE)
	@echo $(DIST)/$(RELEASE).tar.gz

fmt: ## gofmt everything
	gofmt -w $$(git ls-files '*.go')

lint: ## go vet (and staticcheck when installed)
	$(GO) vet ./...
	@command -v staticcheck >/dev/null && staticcheck ./... || true

test: ## every test (needs root for the VM, network and e2e tests)
	bash scripts/test.sh

test-e2e: build ## only the end-to-end tests with real VMs
	$(GO) test -count=1 -timeout 20m -v ./e2e/...

bench: build ## benchmarks (create, exec, memory per VM, snapshots, gateway, proxy)
	$(GO) test -run '^$$' -bench . -benchtime 5x -timeout 30m ./e2e/... ./proxy/... ./gateway/...

soak: ## leak check: MINIONS_SOAK_CYCLES (200) create/exec/destroy cycles, resources must return
	$(GO) test -count=1 -run '^$$' -bench Soak -benchtime 1x -timeout 6h -v ./e2e/

clean: ## remove build output
	rm -rf bin $(DIST)
