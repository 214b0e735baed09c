# leasehold: the two set-up commands are `make run` and `make test`.
CARGO  ?= cargo
CONFIG ?= config/leasehold.toml
BIN    := target/release/leasehold

.PHONY: run cluster build test fixtures test-stress lint fmt bench bench-compare bench-table bench-handoff bench-http bench-durability bench-failover bench-recovery bench-cluster bench-gate bench-tls check-config fuzz man

## run: build the release binary and serve with config/leasehold.toml
run: build
	$(BIN) serve --config $(CONFIG)

## cluster: 3 nodes with a peer link (any node serves changes) on a 3-member etcd on loopback (127.0.0.1:8081-8083, or from CLUSTER_PORT), with commands to try and a failover by hand; Ctrl-C tears it down (needs etcd: tests/deps.sh)
cluster:
	CARGO=$(CARGO) bash tests/cluster/run.sh

build:
	$(CARGO) build --release --locked

## test: everything CI must pass (format, lints with warnings denied, all tests)
test:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(CARGO) test --locked
	CARGO=$(CARGO) bash tests/python.sh

## fixtures: writes tests/fixtures/journal/format-N for the journal format this build writes (once per format; docs/journal-format.md)
fixtures:
	$(CARGO) test --locked --test it formats::write_the_fixtures_of_this_build -- --ignored --exact

## test-stress: the end-to-end suite 5 times with CPU load beside it (stress-ng, installed if missing); names flaky tests. Not part of `make test`
test-stress:
	CARGO=$(CARGO) bash tests/stress.sh

## lint: clippy with warnings denied
lint:
	$(CARGO) clippy --all-targets --locked -- -D warnings

## fmt: format the code
fmt:
	$(CARGO) fmt --all

## bench: the lease table alone, recovery with 1M leases, leasehold against nginx, Redis and etcd as one table, the waiting room gate's cost behind nginx, then TLS against nginx
bench: bench-table bench-recovery bench-compare bench-gate bench-tls

## bench-compare: one run, one table: leasehold (both dispatch modes, fsync=always, hand-off) against its peers (installs wrk, nginx, Redis, etcd)
bench-compare:
	bash benches/compare.sh

## bench-handoff: 1,000 long-polling waiters on one mutex, hand-off latency over HTTP
bench-handoff:
	$(CARGO) bench --locked --bench handoff

## bench-table: the lease table alone, one thread
bench-table:
	$(CARGO) bench --locked --bench lock_table

## bench-http: acquire/release over HTTP in both dispatch modes against nginx (installs wrk, nginx)
bench-http:
	bash benches/http.sh

## bench-durability: acquire/release with each fsync mode against etcd's lock transaction (installs wrk, etcd)
bench-durability:
	bash benches/durability.sh

## bench-tls: acquire/release over leasehold's own TLS port (both dispatch modes) against nginx TLS return 200, kept connections, ratio reported (installs wrk, nginx)
bench-tls:
	bash benches/tls.sh

## bench-gate: requests of an admitted visitor through nginx auth_request to a waiting room's gate, against nginx proxying to the origin with no gate (installs wrk, nginx)
bench-gate:
	bash benches/gate.sh

## bench-cluster: acquire/release through the leader of 3 nodes, and through a follower (forwarded over the peer link), against etcd's lock transaction on the same 3-member etcd (installs wrk, etcd)
bench-cluster:
	bash benches/cluster.sh

## bench-failover: cluster failover time (kill -9 of the leader to the first acknowledged change) over 10 runs, 3-member etcd and 3 nodes on loopback (installs etcd)
bench-failover:
	bash benches/failover.sh

## bench-recovery: recovery time and keeper memory with 1M leases (journal replay and snapshot)
bench-recovery:
	$(CARGO) bench --locked --bench recovery

## fuzz: each parser under AFL++ for FUZZ_SECONDS (150 s a target, 12.5 min in all), seeded from fuzz/seeds; installs cargo-afl; not part of test
fuzz:
	bash fuzz/run.sh

## deb: the Debian package target/debian/leasehold_*.deb (binary, unit, config as a conffile, man page, completions) by cargo-deb, installed with `cargo install --locked cargo-deb` when missing (packaging/deb.sh)
deb: build
	CARGO=$(CARGO) bash packaging/deb.sh

## check-config: validate $(CONFIG)
check-config: build
	$(BIN) check-config $(CONFIG)

## man: write leasehold.1, the man page generated from the command line (`leasehold man`); read it with `man ./leasehold.1`
man: build
	$(BIN) man > leasehold.1.tmp && mv leasehold.1.tmp leasehold.1
