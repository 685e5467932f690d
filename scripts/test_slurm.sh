#!/usr/bin/env bash
# make test-slurm: the SLURM launcher against a real (one-node, private) SLURM cluster.
#
#   1. installs slurm-wlm and munge if missing (apt-get; needs root) and starts a cluster on
#      this machine (scripts/slurm_cluster.sh), in a temp dir that is removed afterwards;
#   2. runs the smoke reproduction (fmnist_2c2d, generated stand-in data) with
#      launcher=submitit_slurm and checks that every run was a SLURM job and that the
#      figure, tables and claims are complete;
#   3. starts a longer run as a SLURM job, cancels it (scancel: SIGTERM) after its first
#      checkpoint, submits the same command again and checks that the run resumed in a
#      second job and completed.
# The daemons are stopped by PID and the temp dir removed on every exit (trap), pass or fail.
# PY (default .venv/bin/python) is the interpreter; KEEP=1 keeps the temp dir for a look.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
T0=$SECONDS
step() { printf '\n[test-slurm %3ds] %s\n' $((SECONDS - T0)) "$*"; }
fail() { echo "[test-slurm] FAILED: $*" >&2; exit 1; }
# Run a command in the background and wait for it, so that Ctrl-C or SIGTERM reach the
# traps at once (and cleanup ends the command) instead of after the command.
in_background() {
    local rc=0
    "$@" &
    CLIENT=$!
    wait "$CLIENT" || rc=$?
    CLIENT=""
    return "$rc"
}

scripts/slurm_cluster.sh install
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dissecting-adam-slurm.XXXXXX")
CLIENT=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $CLIENT ]] && kill -0 "$CLIENT" 2>/dev/null; then
        kill -TERM "$CLIENT" 2>/dev/null || true
        wait "$CLIENT" 2>/dev/null || true
    fi
    scripts/slurm_cluster.sh stop "$WORK/cluster" || true
    if ((rc != 0)); then
        echo "[test-slurm] exit status $rc; the cluster's logs:" >&2
        tail -n 15 "$WORK"/cluster/log/*.log >&2 2>/dev/null || true
    fi
    if [[ ${KEEP:-0} == 1 ]]; then echo "[test-slurm] kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "starting a one-node SLURM cluster in $WORK/cluster"
scripts/slurm_cluster.sh start "$WORK/cluster"
export SLURM_CONF=$WORK/cluster/slurm.conf
export OMP_NUM_THREADS=1  # each job has one CPU
sinfo
# One CPU and 1 GB per run, no GPU, a 10-minute limit: the smoke runs take seconds.
LAUNCHER=(hydra.launcher.partition=debug hydra.launcher.cpus_per_task=1
    hydra.launcher.mem_gb=1 hydra.launcher.timeout_min=10)

step "smoke reproduction with launcher=submitit_slurm"
in_background timeout 1500 "$PY" scripts/reproduce.py profile=smoke 'problems=[fmnist_2c2d]' \
    launcher=submitit_slurm results_root="$WORK/results" estimate=false \
    "overrides=['data.variant=synthetic']" \
    "launcher_overrides=[$(printf "'%s'," "${LAUNCHER[@]}" | sed 's/,$//')]" \
    || fail "the smoke reproduction (status $?)"

step "checking the runs and outputs"
"$PY" - "$WORK/results/smoke" <<'EOF'
import csv, json, sys
from pathlib import Path

root = Path(sys.argv[1])
envs = sorted(root.glob("fmnist_2c2d/*/lr=*/seed=*/environment.json"))
assert envs, f"no runs under {root}"
jobs = set()
for env in envs:
    sessions = json.loads(env.read_text())["sessions"]
    ids = [(s.get("slurm") or {}).get("slurm_job_id") for s in sessions]
    assert sessions and all(ids), f"{env.parent}: a session without a SLURM job id: {sessions}"
    status = json.loads((env.parent / "summary.json").read_text())["status"]
    assert status in ("completed", "diverged"), f"{env.parent}: {status}"
    jobs.update(ids)
fig = root / "fig5"
for name in ("fig5.png", "summary.csv", "claims.md", "selection.json"):
    assert (fig / name).is_file() and (fig / name).stat().st_size > 0, f"no {fig / name}"
rows = list(csv.DictReader((fig / "summary.csv").open()))
methods = {r.get("optimizer") or r.get("method") for r in rows}
assert {"msgd", "mssd", "msvag", "adam"} <= methods, f"summary.csv has methods {methods}"
print(f"ok: {len(envs)} runs, each recorded in a SLURM job ({len(jobs)} job ids); "
      f"fig5.png, summary.csv ({len(rows)} rows, methods {sorted(methods)}), claims.md, "
      "selection.json")
EOF

step "a run cancelled mid-way (scancel) resumes when submitted again"
RESUME=$WORK/resume
# The slurm preset (conf/hydra/launcher/slurm.yaml) without its GPU; the CPU, so that the
# run lasts long enough to be cancelled after its first checkpoint (25 of 200 steps).
TRAIN=("$PY" scripts/train.py -m hydra/launcher=slurm "${LAUNCHER[@]}"
    hydra.launcher.gpus_per_task=null hydra.launcher.timeout_min=30 problem=fmnist_2c2d
    optimizer=msvag profile=smoke data.variant=synthetic results_root="$RESUME" device=cpu
    train.num_steps=200 train.checkpoint_every=25 train.progress=lines seed=0)
"${TRAIN[@]}" >"$WORK/first.log" 2>&1 &
CLIENT=$!
checkpoint() { compgen -G "$RESUME/smoke/fmnist_2c2d/msvag/lr=*/seed=0-*/checkpoint.pt" >/dev/null; }
deadline=$((SECONDS + 300))
until checkpoint; do
    kill -0 "$CLIENT" 2>/dev/null || { cat "$WORK/first.log"; fail "the job ended before its first checkpoint"; }
    ((SECONDS < deadline)) || fail "no checkpoint after 300 s"
    sleep 0.2
done
JOB=$(squeue -h -o %A | head -1)
[[ -n $JOB ]] || fail "no job in the queue"
echo "checkpoint written; scancel $JOB"
scancel "$JOB"
deadline=$((SECONDS + 60))
until [[ -z $(squeue -h -o %A) ]]; do
    ((SECONDS < deadline)) || fail "job $JOB still listed 60 s after scancel"
    sleep 0.5
done
# Without SLURM accounting (sacct) submitit cannot learn that the job was cancelled, so
# its client would wait for a result forever: end it here (a cluster with accounting
# reports the job as CANCELLED and the client exits with an error).
kill -TERM "$CLIENT" 2>/dev/null || true
wait "$CLIENT" 2>/dev/null || true
CLIENT=""
echo "submitting the same command again"
if ! in_background timeout 900 "${TRAIN[@]}" >"$WORK/second.log" 2>&1; then
    tail -n 20 "$WORK/second.log" "$RESUME"/_sweeps/*/.submitit/*/*_log.err || true
    fail "the resubmitted run"
fi
"$PY" - "$RESUME/smoke" "$JOB" <<'EOF'
import json, sys
from pathlib import Path

(env,) = Path(sys.argv[1]).glob("fmnist_2c2d/msvag/lr=*/seed=0-*/environment.json")
sessions = json.loads(env.read_text())["sessions"]
summary = json.loads((env.parent / "summary.json").read_text())
ids = [(s.get("slurm") or {}).get("slurm_job_id") for s in sessions]
assert len(sessions) == 2, f"{len(sessions)} sessions: {sessions}"
first, second = sessions
assert first["status"] == "interrupted", f"first session: {first}"
assert second["resumed"] and second["status"] == "completed", f"second session: {second}"
assert all(ids) and ids[0] != ids[1], f"SLURM job ids {ids}"
assert ids[0] == sys.argv[2] or (first["slurm"].get("slurm_array_job_id") == sys.argv[2]), ids
assert summary["status"] == "completed", summary
print(f"ok: session 1 (job {ids[0]}) interrupted, session 2 (job {ids[1]}) resumed and "
      f"completed {summary.get('steps', summary.get('num_steps', ''))}")
EOF

step "passed in $((SECONDS - T0)) s"
