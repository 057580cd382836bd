#!/usr/bin/env bash
# Builds SMTPFuzzer with libFuzzer and AddressSanitizer, then fuzzes each target, one after
# the other, for FUZZ_TIME seconds (default 60; 0: no time limit) or FUZZ_RUNS executions
# (default: no limit), whichever comes first. Used by `make fuzz`; see Fuzz/README.md.
#
#   FUZZ_TIME=30 FUZZ_TARGETS="parser proxy" Fuzz/run.sh
#   FUZZ_TIME=0 FUZZ_RUNS=10000000 FUZZ_TARGETS=resp Fuzz/run.sh
#
# The committed seeds (Fuzz/corpus/<target>, Fuzz/regressions/<target>) are only read:
# libFuzzer writes new inputs into the first corpus directory it is given, which is the
# working copy .build-fuzz/corpus/<target>. Crash inputs land in .build-fuzz/crashes/<target> (not under artifacts/,
# which SwiftPM owns and empties when it builds: a second `make fuzz` would wipe a running one's).
# FUZZ_BUILD=0 uses the fuzzer already built (a long run then survives edits to the sources).
# FUZZ_MAX_LEN=N: inputs of at most N octets (the RESP target slows down on the 50 KB inputs its
# corpus grows to: a reply read in 1-64-octet pieces is parsed again from its start each time).
# Exits non-zero when any target crashed (or the build failed).
set -euo pipefail
cd "$(dirname "$0")/.."

SWIFT=${SWIFT:-swift}
FUZZ_TIME=${FUZZ_TIME:-60}
FUZZ_RUNS=${FUZZ_RUNS:-}
FUZZ_TARGETS=${FUZZ_TARGETS:-parser session proxy mime policy resp config milter}
SCRATCH=.build-fuzz
FUZZER=$SCRATCH/release/SMTPFuzzer

if [ "${FUZZ_BUILD:-1}" = 0 ] && [ -x "$FUZZER" ]; then
    echo "==> using the SMTPFuzzer already built in $SCRATCH (FUZZ_BUILD=0)"
else
    echo "==> building SMTPFuzzer (libFuzzer + ASan) in $SCRATCH"
    # -parse-as-library: the entry point is SMTPFuzzer_main (see Sources/SMTPFuzzer/SMTPFuzzer.swift);
    # --allow-multiple-definition: libclang_rt.fuzzer brings a main of its own.
    "$SWIFT" build -c release --scratch-path "$SCRATCH" --product SMTPFuzzer \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -DPOSTERN_LIBFUZZER \
        -Xlinker --allow-multiple-definition
fi

dictionary_for() {
    case "$1" in
        parser|session) echo Fuzz/dictionaries/smtp.dict ;;
        *) echo "Fuzz/dictionaries/$1.dict" ;;
    esac
}

failed=0
summary=()
for target in $FUZZ_TARGETS; do
    if [ ! -d "Fuzz/corpus/$target" ]; then
        echo "unknown fuzz target '$target' (no Fuzz/corpus/$target)" >&2
        exit 2
    fi
    work="$SCRATCH/corpus/$target"
    artifacts="$SCRATCH/crashes/$target"
    log="$SCRATCH/logs/$target.log"
    mkdir -p "$work" "$artifacts" "$SCRATCH/logs"
    seeds=("Fuzz/corpus/$target")
    [ -d "Fuzz/regressions/$target" ] && seeds+=("Fuzz/regressions/$target")
    dict=$(dictionary_for "$target")
    dict_flag=()
    [ -f "$dict" ] && dict_flag=("-dict=$dict")
    runs_flag=()
    [ -n "$FUZZ_RUNS" ] && runs_flag=("-runs=$FUZZ_RUNS")
    # FUZZ_MAX_LEN: no input longer than this (libFuzzer's -max_len; longer corpus inputs are cut).
    [ -n "${FUZZ_MAX_LEN:-}" ] && runs_flag+=("-max_len=$FUZZ_MAX_LEN")
    echo "==> fuzzing $target for ${FUZZ_TIME}s${FUZZ_RUNS:+ or $FUZZ_RUNS executions} (log: $log)"
    before=$(ls "$artifacts" | wc -l)
    status=0
    started=$(date +%s)
    # SWIFT_BACKTRACE=enable=no: a trap ends the process at once, for libFuzzer to record.
    # -timeout=10: an input that takes 10 s is a hang and is kept as timeout-*.
    SWIFT_BACKTRACE=enable=no "$FUZZER" "$target" \
        -max_total_time="$FUZZ_TIME" "${runs_flag[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "${dict_flag[@]}" "$work" "${seeds[@]}" >"$log" 2>&1 || status=$?
    seconds=$(( $(date +%s) - started ))
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    # Without final stats (a crash), the last status line: "#1234 ... exec/s: 567 ...".
    [ -z "$executions" ] && executions=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
    [ -z "$rate" ] && rate=$(grep -oE 'exec/s: [0-9]+' "$log" | tail -1 | sed 's/exec\/s: //' || true)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    # libFuzzer stops at the first crash, leak, timeout or out-of-memory input and keeps it.
    crashes=$(( $(ls "$artifacts" | wc -l) - before ))
    # 72: libFuzzer's exit after SIGINT (a run stopped by hand), with its final stats.
    if [ "$status" -eq 72 ] && [ "$crashes" -eq 0 ]; then
        echo "    $target interrupted (SIGINT) after ${executions:-?} executions"
    elif [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
    if [ "$crashes" -gt 0 ]; then
        failed=1
        echo "    CRASH in $target (exit $status); inputs kept in $artifacts:" $(ls -t "$artifacts" | head -"$crashes")
        grep -E 'Fatal error|Precondition failed|==ERROR|SUMMARY' "$log" | head -5 | sed 's/^/    /'
    fi
    summary+=("$(printf '%-8s %12s %8s %8s %6s %7s %7s' \
        "$target" "${executions:-?}" "${rate:-?}" "$seconds" "$crashes" "${cov:-?}" "${ft:-?}")")
done

echo "==> summary (FUZZ_TIME=${FUZZ_TIME}s${FUZZ_RUNS:+, FUZZ_RUNS=$FUZZ_RUNS} per target)"
printf '%-8s %12s %8s %8s %6s %7s %7s\n' target executions exec/s seconds crashes cov ft
printf '%s\n' "${summary[@]}"
exit "$failed"
