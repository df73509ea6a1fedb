#!/usr/bin/env bash
# The whole test suite: formatting and vet, unit tests with the race detector, a short
# run of every fuzz target, and the integration tests that boot real microVMs under
# QEMU (each in a network namespace of its own). Safe to run again.
source "$(dirname "$0")/lib.sh"
# Host packages (qemu, busybox-static, e2fsprogs) and the kernel package: the
# integration tests bootstrap their own root, but packages are installed once here.
bin/mvmctl --root "${MVM_TEST_ROOT:-/var/tmp/mvm-it}" bootstrap

echo "== gofmt, go vet"
unformatted=$(gofmt -l cmd internal test)
if [ -n "$unformatted" ]; then echo "gofmt needed: $unformatted" >&2; exit 1; fi
go vet ./...

echo "== unit tests (race detector)"
CGO_ENABLED=1 go test -race -count=1 -timeout 10m $(go list ./... | grep -v /test/integration)

# A count, not a duration: Go 1.26's fuzz coordinator can fail a target with "context
# deadline exceeded" when a -fuzztime duration runs out mid-call (golang/go#75804).
echo "== fuzz targets (${FUZZTIME:=20000x} each)"
while read -r pkg target; do
	if ! out=$(go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg" 2>&1); then
		echo "$out" | tail -40
		echo "FAIL $target ($pkg)"
		exit 1
	fi
	echo "ok  $target ($pkg)"
done < <(grep -rl --include='*_test.go' '^func Fuzz' cmd internal | while read -r f; do
	for t in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | cut -d' ' -f2); do echo "./$(dirname "$f") $t"; done
done)

echo "== integration tests (real microVMs)"
# The whole verbose output goes to a file; the summary shows the tests and their
# messages, and on a failure the output's end (consoles included) follows.
log="${TMPDIR:-/tmp}/mvm-integration-$$.log"
rc=0
MVM_REQUIRE_INTEGRATION=1 MVM_TEST_BIN="$PWD/bin" go test -count=1 -timeout 30m -v ./test/integration/ >"$log" 2>&1 || rc=$?
grep -E '^(=== RUN|--- |ok|FAIL|PASS|panic|\s+\S+_test\.go)' "$log" || true
if [ "$rc" != 0 ]; then
	echo "== the end of the integration tests' output (all of it: $log)"
	grep -vE '^=== (RUN|PAUSE|CONT|NAME)' "$log" | tail -n 300
else
	rm -f "$log"
fi
exit "$rc"
