"""slurm/train_multinode.sbatch's SIGTERM trap and requeue decisions, run directly with stand-ins for `srun`,
`squeue`, `scancel`, `scontrol`, `nvidia-smi` and `accelerate launch` (no SLURM needed, a few seconds each).

The stand-in srun runs the node command locally and, like the real one, forwards SIGUSR1 to the node task and its
children and answers SIGTERM with SIGKILL; the stand-in scancel signals the node task and the stand-in accelerate, and
`scontrol show job` describes a RUNNING job (FAKE_JOB_STATE, FAKE_PREEMPT_TIME, FAKE_END_IN: seconds to its EndTime). The stand-in accelerate reports progress to $SAPO_RUN_STATUS_FILE as trl_sapo's
CheckpointCompletionCallback does, waits for SIGTERM, then "saves" (or not) and exits 1, as torchrun's agent does
after any signal. The real-cluster versions are in test_slurm.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = REPO_ROOT / "slurm" / "train_multinode.sbatch"
ACCEL_CONFIG = "accelerate_configs/cpu_2proc_ddp.yaml"
JOB_ID = "4242"

# FAKE_SIGNAL_AT_LAUNCH: SIGTERM to the batch script (its parent) as srun starts, before the step exists.
FAKE_SRUN = """#!/bin/bash
[[ -z $FAKE_SIGNAL_AT_LAUNCH ]] || { kill -TERM $PPID; sleep 0.5; }
while [[ $# -gt 0 && $1 == --* ]]; do shift; done
export SLURM_NODEID=0 SLURMD_NODENAME=n1
"$@" &
child=$!
trap 'kill -USR1 $child $(pgrep -P $child)' USR1
trap 'kill -KILL $child $(pgrep -P $child)' TERM
while kill -0 $child 2>/dev/null; do wait $child; done
wait $child
"""
# FAKE_FAIL: space-separated commands that fail (squeue, scancel, requeue, show-job, update); FAKE_FAIL_ONCE: the same,
# for their first call only. FAKE_NODE_DIR/<node>: that node's `scontrol show node -o` line.
FAKE_SLURM_CLIENT = """#!/bin/bash
name=$(basename "$0")
[[ $name == scontrol && $1 == show && $2 == hostnames ]] && { printf '%s\\n' ${FAKE_NODES:-n1}; exit 0; }
[[ $name == scontrol && $1 == --version ]] && { echo "slurm ${FAKE_SLURM_VERSION:-22.05.8}"; exit 0; }
[[ $name == scontrol ]] && name=$1
[[ $name == show ]] && name=show-$2
echo "$name $*" >>"$FAKE_CALLS"
[[ " $FAKE_FAIL " == *" $name "* ]] && { echo "$name: error: Unable to contact slurm controller" >&2; exit 1; }
if [[ " $FAKE_FAIL_ONCE " == *" $name "* && ! -e "$FAKE_CALLS.$name" ]]; then
    touch "$FAKE_CALLS.$name"; echo "$name: error: Socket timed out on send/recv operation" >&2; exit 1
fi
when() { date -d "@$(( $(date +%s) + $1 ))" +%Y-%m-%dT%H:%M:%S; }
case $name in
    squeue) [[ ! -s $FAKE_TRAIN_PID ]] || echo "$SLURM_JOB_ID.0 sapo-train" ;;  # once the step runs
    scancel) train=$(cat "$FAKE_TRAIN_PID")
             kill -TERM "$train" "$(ps -o ppid= "$train" | tr -d ' ')"  # the stand-in accelerate and its node task
             # FAKE_SCANCEL_WAITS: return only once the step and srun are gone (srun ends while the trap runs)
             [[ -z $FAKE_SCANCEL_WAITS ]] || { while kill -0 "$train" 2>/dev/null; do sleep 0.1; done; sleep 1; } ;;
    show-job) preempt=${FAKE_PREEMPT_TIME:-None}; [[ $preempt != now ]] || preempt=$(when 0)
              echo "JobId=$SLURM_JOB_ID JobState=${FAKE_JOB_STATE:-RUNNING} Requeue=1 Restarts=0 PreemptTime=$preempt" \\
                   "EndTime=$(when "${FAKE_END_IN:-100}") Partition=debug" ;;
    show-node) cat "$FAKE_NODE_DIR/$3" 2>/dev/null ;;
    show-partition) echo "PartitionName=debug PreemptMode=${FAKE_PREEMPT_MODE:-REQUEUE}" ;;
esac
exit 0
"""
# FAKE_PROGRESS: checkpoint (saves on SIGTERM), cut-off (trains, the save never completes), startup (no report),
# none (exits 3 at once).
FAKE_ACCELERATE = """#!/bin/bash
echo $$ >"$FAKE_TRAIN_PID"
echo "shutdown_timeout=$TORCH_ELASTIC_SHUTDOWN_TIMEOUT signals=$PET_SIGNALS_TO_HANDLE args: $*"
[[ $FAKE_PROGRESS == none ]] && exit 3  # not a training run: just record how it was started
report() { echo "$1 restart=$SAPO_RESTART_COUNT step=$2${3:+ path=$3}" >>"$SAPO_RUN_STATUS_FILE"; }
on_term() {
    echo "FAKE_TRAIN got $1"
    if [[ $FAKE_PROGRESS == checkpoint ]]; then report checkpoint 3 /out/checkpoint-3; report sigterm_stop 3; fi
    exit "${FAKE_STOP_EXIT:-1}"  # torchrun's agent exits 1 after any signal
}
trap 'on_term SIGTERM' TERM
trap 'on_term SIGUSR1' USR1  # torchrun's agent with PET_SIGNALS_TO_HANDLE, and the trainers, take it as SIGTERM
[[ $FAKE_PROGRESS == startup ]] || report train_begin 2
touch "$FAKE_READY"
for i in $(seq 1 300); do sleep 0.1; done
exit 3
"""


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def job_env(tmp_path: Path, restart: int = 0, **extra: str) -> dict[str, str]:
    """The environment SLURM gives the batch script, with the stand-ins (written to tmp_path/bin) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    write_exe(bin_dir / "srun", FAKE_SRUN)
    for name in ("squeue", "scancel", "scontrol"):
        write_exe(bin_dir / name, FAKE_SLURM_CLIENT)
    write_exe(bin_dir / "nvidia-smi", "#!/bin/bash\nexit 0\n")  # GPUs hidden from this job: none listed
    fake = write_exe(tmp_path / "fake_accelerate", FAKE_ACCELERATE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "TORCH_ELASTIC"))}
    env |= {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NODELIST": "n1",
        "SLURM_NNODES": "1", "SLURM_SUBMIT_DIR": str(REPO_ROOT), "SLURM_RESTART_COUNT": str(restart),
        "LOG_DIR": str(tmp_path / "logs"), "GPUS_PER_NODE": "0", "MAIN_ADDR": "127.0.0.1", "MAIN_PORT": "29999",
        "ACCELERATE": str(fake), "FAKE_READY": str(tmp_path / "ready"), "FAKE_CALLS": str(tmp_path / "calls"),
        "FAKE_PROGRESS": "none", "FAKE_TRAIN_PID": str(tmp_path / "train.pid"),
    }  # fmt: skip
    return env | extra


def one_host_nodes(tmp_path: Path) -> str:
    """`scontrol show node` answers for n1 and n2 on one host at 127.0.0.1 (like tests/slurm_cluster.py's)."""
    nodes = tmp_path / "nodes"
    nodes.mkdir(exist_ok=True)
    for node in ("n1", "n2"):
        (nodes / node).write_text(f"NodeName={node} NodeAddr=127.0.0.1 NodeHostName=vm\n")
    return str(nodes)


def run_launcher(
    tmp_path, progress="checkpoint", fail=(), restart=0, signal_job="batch", env=None, flags=(), config=ACCEL_CONFIG
):
    """Run the launcher as SLURM would (`job_env`); once training is up, SIGTERM the batch script (`signal_job`
    "batch": the time-limit warning or a user's `scancel --batch`) or the training step ("step": a GraceTime
    pre-emption), or nothing (False). Returns (exit code, launcher stderr+stdout, node log, stand-in client calls)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: x\n")
    ready, calls = tmp_path / "ready", tmp_path / "calls"
    ready.unlink(missing_ok=True)
    full_env = job_env(tmp_path, restart, FAKE_FAIL=" ".join(fail), FAKE_PROGRESS=progress) | (env or {})
    proc = subprocess.Popen(
        [str(LAUNCHER), config, str(recipe), *flags],
        env=full_env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if signal_job:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the stand-in training never started"
            time.sleep(0.05)
        if signal_job == "step":  # the stand-in accelerate and its node task, as SLURM signals every step process
            train = int((tmp_path / "train.pid").read_text())
            node_task = int(subprocess.run(["ps", "-o", "ppid=", str(train)], capture_output=True, text=True).stdout)
            for pid in (train, node_task):
                os.kill(pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)  # the time-limit warning (--signal=B:TERM) for the batch script
    out, _ = proc.communicate(timeout=60)
    node_log = tmp_path / "logs" / JOB_ID / "node0.log"
    return (
        proc.returncode,
        out,
        node_log.read_text() if node_log.exists() else "",
        calls.read_text() if calls.exists() else "",
    )


def test_trap_survives_an_unreachable_slurmctld(tmp_path):
    """squeue, scancel and scontrol all fail (slurmctld down during a mass pre-emption): the trap does not abort the
    script (set -euo pipefail), the stop signal still reaches training through srun (SIGUSR1, which torchrun's agent
    is told to handle like SIGTERM), training saves, the failed requeue is retried and reported, and the job ends
    cleanly."""
    code, out, node_log, calls = run_launcher(tmp_path, fail=("squeue", "scancel", "requeue", "show-job"))
    assert "FAKE_TRAIN got SIGUSR1" in node_log, node_log
    assert "signals=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 " in node_log, node_log
    assert "squeue/scancel failed (slurmctld unreachable?): SIGUSR1 to srun" in out, out
    assert calls.count(f"requeue requeue {JOB_ID}\n") == 2, calls  # retried once
    assert "`scontrol show job 4242` failed 4 times (slurmctld unreachable?): deciding as for a pre-emption" in out
    assert "could not requeue" in out and "this run saved /out/checkpoint-3" in out, out
    assert code == 0, out


def test_trap_forwards_through_scancel_and_requeues_after_progress(tmp_path):
    """The normal path: squeue finds the training step, scancel signals it, the run saved a newer complete
    checkpoint, so the job is requeued. The save window follows the lead time (SBATCH_SIGNAL)."""
    code, out, node_log, calls = run_launcher(tmp_path, env={"SBATCH_SIGNAL": "B:TERM@300"})
    assert code == 0, out
    assert f"scancel --signal=TERM {JOB_ID}.0\n" in calls, calls
    assert "FAKE_TRAIN got SIGTERM" in node_log, node_log
    assert "shutdown_timeout=280 " in node_log, node_log  # 300 s lead - 20 s to requeue
    assert f"requeue requeue {JOB_ID}" in calls and "this run saved /out/checkpoint-3" in out, (calls, out)
    assert (tmp_path / "logs" / JOB_ID / "requeues").read_text() == "restart=0 kind=progress\n"


def test_default_save_window_comes_from_the_sbatch_signal_line(tmp_path):
    code, out, node_log, _ = run_launcher(tmp_path, progress="none", signal_job=False)
    assert "shutdown_timeout=160 " in node_log, node_log  # #SBATCH --signal=B:TERM@180, minus 20
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=160s" in out
    assert code == 3, out  # the stand-in's own exit when nobody signals it


def test_no_requeue_when_the_save_was_cut_off(tmp_path):
    """Training ran but no complete checkpoint came out of this run (the save did not fit): requeueing would lose
    the same work forever, so the job ends FAILED with the reason."""
    code, out, _, calls = run_launcher(tmp_path, progress="cut-off")
    assert "requeue " not in calls, calls
    assert "not requeueing job 4242: training ran but saved no new complete checkpoint" in out, out
    assert "raise the lead time with SBATCH_SIGNAL=B:TERM@SECONDS" in out
    assert code == 1, out


def test_startup_requeues_are_capped_separately(tmp_path):
    """Stopped before training began: requeued (counted as a start-up requeue) until MAX_STARTUP_REQUEUES in a row."""
    code, out, _, calls = run_launcher(tmp_path, progress="startup", restart=5)
    assert code == 0 and "start-up requeue 1 of at most 3" in out and "requeue requeue" in calls, (out, calls)
    requeues = tmp_path / "logs" / JOB_ID / "requeues"
    requeues.write_text("restart=0 kind=progress\n" + "".join(f"restart={r} kind=startup\n" for r in (1, 2, 3)))
    (tmp_path / "calls").unlink()
    code, out, _, calls = run_launcher(tmp_path, progress="startup", restart=4)
    assert "requeue " not in calls, calls
    assert "stopped before training began 4 times in a row (MAX_STARTUP_REQUEUES=3)" in out, out
    assert code == 1, out


def test_max_requeues_caps_restarts(tmp_path):
    code, out, _, calls = run_launcher(tmp_path, restart=2, env={"MAX_REQUEUES": "2"})
    assert "requeue " not in calls, calls
    assert "not requeueing job 4242: MAX_REQUEUES=2 reached (this was restart 2)" in out, out
    assert code == 0, out  # this run did save its checkpoint: a clean stop


def test_sigterm_during_start_up_skips_training_and_requeues(tmp_path):
    """SIGTERM while the launcher still waits for the vLLM server: training is not started at all, and the job is
    requeued as a start-up requeue (counted against MAX_STARTUP_REQUEUES, not as progress)."""
    fake_trl = write_exe(tmp_path / "fake_trl", '#!/bin/bash\ntouch "$FAKE_READY"\nexec sleep 60\n')
    env = {"VLLM_SERVER": "1", "TRL": str(fake_trl), "FAKE_NODES": "n1 n2", "SLURM_NNODES": "2",
           "FAKE_NODE_DIR": one_host_nodes(tmp_path)}  # fmt: skip
    code, out, node_log, calls = run_launcher(tmp_path, env=env)
    assert "vLLM server on n2" in out and node_log == "", (out, node_log)  # no training step was started
    assert not (tmp_path / "train.pid").exists()
    assert "start-up requeue 1 of at most 3" in out and f"requeue requeue {JOB_ID}" in calls, (out, calls)
    assert (tmp_path / "logs" / JOB_ID / "requeues").read_text() == "restart=0 kind=startup\n"
    assert code == 0, out


@pytest.mark.parametrize(
    ("recipe", "flags", "refused"),
    [("model_name_or_path: x\n", [], True), ("model_name_or_path: x\nuse_cpu: true\n", [], False),
     ("model_name_or_path: x\n", ["--use_cpu", "true"], False)],
    ids=["gpu-recipe", "cpu-recipe", "cpu-flag"],
)  # fmt: skip
def test_gpu_recipe_without_visible_gpus_is_an_error(tmp_path, recipe, flags, refused):
    """A job without --gres on a cluster that hides unrequested GPUs sees none: a GPU run is refused (it would
    silently train on CPU), a CPU run goes ahead."""
    (tmp_path / "recipe.yaml").write_text(recipe)
    env = job_env(tmp_path)
    del env["GPUS_PER_NODE"]
    env.pop("SLURM_GPUS_ON_NODE", None)
    proc = subprocess.run(
        [str(LAUNCHER), "accelerate_configs/multi_gpu.yaml", str(tmp_path / "recipe.yaml"), *flags],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if refused:
        assert proc.returncode == 2, proc.stderr
        assert "no GPUs visible on" in proc.stderr and "sbatch --gres=gpu:N or --gpus-per-node=N" in proc.stderr
    else:
        assert "no GPUs visible" not in proc.stderr, proc.stderr
        assert "procs_per_node=1 (gpus_per_node=0)" in proc.stdout, proc.stdout
        assert proc.returncode == 3, proc.stderr  # the stand-in training ran (and exited on its own)


def test_user_stop_through_the_batch_script_is_not_requeued(tmp_path):
    """SIGTERM to the batch script far from the time limit and without a pre-emption (`scancel --batch --signal=TERM`,
    a user's stop): training is stopped after its checkpoint, the job is not requeued and ends 0."""
    code, out, node_log, calls = run_launcher(tmp_path, env={"FAKE_END_IN": "86400"})
    assert "FAKE_TRAIN got SIGTERM" in node_log, node_log
    assert "requeue " not in calls and "a user's stop" in out, (calls, out)
    assert (tmp_path / "logs" / JOB_ID / "requeues").read_text() == "restart=0 kind=stop status=0\n"
    assert code == 0, out


def test_cancelled_job_is_not_requeued(tmp_path):
    """`scancel <job>`: SLURM marks the job CANCELLED and SIGTERMs the batch script too; it must not requeue it
    (`scontrol requeue` accepts a completing job: the cancel would be undone)."""
    code, out, _, calls = run_launcher(tmp_path, env={"FAKE_JOB_STATE": "CANCELLED"})
    assert "requeue " not in calls, calls
    assert "job 4242 is CANCELLED, not RUNNING (cancelled, or ended by SLURM): not requeueing" in out, out


def test_preemption_is_found_despite_a_failed_query_and_a_user_time_format(tmp_path):
    """The first `scontrol show job` fails (slurmctld busy) and the user exported SLURM_TIME_FORMAT: the query is
    retried in the pinned standard format, the pre-emption is found and the run that saved is requeued."""
    env = {"FAKE_PREEMPT_TIME": "now", "FAKE_END_IN": "60", "FAKE_FAIL_ONCE": "show-job",
           "SLURM_TIME_FORMAT": "%d.%m. %H:%M"}  # fmt: skip
    code, out, _, calls = run_launcher(tmp_path, signal_job="step", env=env)
    assert calls.count("show-job show job -o 4242") == 2, calls
    assert "pre-empted at" in out and f"requeue requeue {JOB_ID}" in calls, (out, calls)
    assert code == 0, out


@pytest.mark.parametrize(
    ("spec", "lead"),
    [("B:TERM@300", 300), ("B:TERM", 60), ("B:SIGTERM@90", 90), ("B:USR1@300", None), ("TERM@300", None),
     ("B:TERM@", None), ("B:TERM@5m", None)],
)  # fmt: skip
def test_sbatch_signal_forms(tmp_path, spec, lead):
    """Only B:TERM[@L] can work: B:USR1 would kill the batch script (bash's default action), TERM@L without B: never
    reaches it. SLURM's default lead time for B:TERM is 60 s."""
    code, out, node_log, _ = run_launcher(tmp_path, progress="none", signal_job=False, env={"SBATCH_SIGNAL": spec})
    if lead is None:
        assert code == 2 and f"SBATCH_SIGNAL='{spec}' cannot work with this script" in out, out
        assert "use SBATCH_SIGNAL=B:TERM@SECONDS" in out
    else:
        assert f"save window: SIGTERM {lead}s before the time limit" in out, out
        assert code == 3, out


def test_slurm_24_05_requeues_preempted_jobs_itself(tmp_path):
    """SLURM >= 24.05 with PreemptMode=REQUEUE requeues a job that ends after a GraceTime pre-emption: the script
    does not add its own `scontrol requeue` (that would leave SLURM's mark and requeue the restart once more)."""
    env = {"FAKE_SLURM_VERSION": "24.05.1", "FAKE_PREEMPT_TIME": "now"}
    code, out, _, calls = run_launcher(tmp_path, signal_job="step", env=env)
    assert "requeue " not in calls, calls
    assert "SLURM 24.05 requeues job 4242 itself" in out, out
    assert (tmp_path / "logs" / JOB_ID / "requeues").read_text() == "restart=0 kind=progress\n"
    assert code == 0, out


def test_slurm_24_05_keeps_the_caps_on_a_preemption(tmp_path):
    """A pre-empted run that saved nothing after it began is not to be requeued: on SLURM >= 24.05 the script turns
    the job's Requeue off so SLURM does not requeue it either; a restart SLURM makes anyway ends at once."""
    env = {"FAKE_SLURM_VERSION": "24.05.1", "FAKE_PREEMPT_TIME": "now"}
    code, out, _, calls = run_launcher(tmp_path, progress="cut-off", signal_job="step", env=env)
    assert f"update update JobId={JOB_ID} Requeue=0" in calls and "requeue requeue" not in calls, calls
    assert code == 1, out
    code, out, node_log, _ = run_launcher(tmp_path, restart=1, signal_job=False)
    assert "restart 1 of job 4242 was not asked for" in out and "kind=stop status=1" in out, out
    assert node_log.count("restart=1") == 0, node_log  # no training started
    assert code == 1, out


@pytest.mark.parametrize(
    ("saved", "flags", "appended"),
    [(True, ["--resume_from_checkpoint", "old/checkpoint-50"], "--resume_from_checkpoint {ckpt}"),
     (False, ["--resume_from_checkpoint", "old/checkpoint-50"], ""),
     (False, [], "--resume_from_checkpoint auto")],
    ids=["saved", "named-not-saved", "neither"],
)  # fmt: skip
def test_restart_resumes_from_what_this_job_saved(tmp_path, saved, flags, appended):
    """A restart continues from the last checkpoint this job saved (not `auto`, which would undo a rollback to an
    older checkpoint); before its first save the checkpoint the command names stands."""
    ckpt = tmp_path / "out" / "checkpoint-60"
    ckpt.mkdir(parents=True)
    (tmp_path / "logs" / JOB_ID).mkdir(parents=True)
    status = "train_begin restart=0 step=50\n" + (f"checkpoint restart=0 step=60 path={ckpt}\n" if saved else "")
    (tmp_path / "logs" / JOB_ID / "run_status").write_text(status)
    (tmp_path / "logs" / JOB_ID / "requeues").write_text("restart=0 kind=progress\n")
    code, out, node_log, _ = run_launcher(tmp_path, progress="none", restart=1, signal_job=False, flags=flags)
    args = node_log.split(" --config ")[1].split("\n")[0]
    assert args.endswith(f"{' '.join(flags)} {appended.format(ckpt=ckpt)}".rstrip()), args
    assert code == 3, out


def test_srun_ending_during_the_trap_keeps_the_training_status(tmp_path):
    """srun exits while the trap still runs: the job's exit is training's own (5 here), not 143 from the wait the
    trap interrupted."""
    env = {"FAKE_END_IN": "86400", "FAKE_SCANCEL_WAITS": "1", "FAKE_STOP_EXIT": "5"}
    code, out, _, _ = run_launcher(tmp_path, progress="cut-off", env=env)
    assert code == 5, out


def test_deepspeed_uses_the_standard_multinode_launcher(tmp_path):
    """DeepSpeed's own default multi-node launcher is pdsh (no torchrun per node, no save window): the launcher asks
    for `standard` whatever the config says."""
    code, out, node_log, _ = run_launcher(
        tmp_path, progress="none", signal_job=False, config="accelerate_configs/zero2.yaml"
    )
    assert " --deepspeed_multinode_launcher standard " in node_log, node_log
    assert code == 3, out


def test_vllm_server_address_on_loopback_is_refused(tmp_path):
    """Where the server node's name resolves to 127.0.1.1 (Debian/Ubuntu /etc/hosts) the server would listen on
    loopback, unreachable from the trainers on another host: refused, naming the address."""
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    (nodes / "n1").write_text("NodeName=n1 NodeAddr=gpu1 NodeHostName=gpu1\n")
    (nodes / "n2").write_text("NodeName=n2 NodeAddr=gpu2 NodeHostName=gpu2\n")
    (tmp_path / "bin").mkdir()
    write_exe(tmp_path / "bin" / "getent", '#!/bin/bash\necho "127.0.1.1 STREAM $2"\n')
    env = {"VLLM_SERVER": "1", "FAKE_NODES": "n1 n2", "SLURM_NNODES": "2", "FAKE_NODE_DIR": str(nodes)}
    code, out, _, _ = run_launcher(tmp_path, progress="none", signal_job=False, env=env)
    assert code == 2 and "vLLM server address 127.0.1.1 (from 'gpu2', node n2) is a loopback address" in out, out


def test_vllm_startup_timeout_names_the_address(tmp_path):
    fake_trl = write_exe(tmp_path / "fake_trl", "#!/bin/bash\nexec sleep 60\n")
    env = {"VLLM_SERVER": "1", "TRL": str(fake_trl), "FAKE_NODES": "n1 n2", "SLURM_NNODES": "2",
           "FAKE_NODE_DIR": one_host_nodes(tmp_path), "VLLM_PORT": "1", "VLLM_STARTUP_TIMEOUT": "1"}  # fmt: skip
    code, out, _, _ = run_launcher(tmp_path, progress="none", signal_job=False, env=env)
    assert code == 2 and "not healthy at http://127.0.0.1:1/health after 1s" in out, out


def test_possibly_empty_arrays_are_expanded_safely_for_bash_before_4_4():
    """`"${arr[@]}"` of an empty array is an unbound-variable error under `set -u` on bash < 4.4 (still on some
    cluster images): every array expansion uses the `${arr[@]+"${arr[@]}"}` form."""
    text = LAUNCHER.read_text()
    unguarded = [m.group(0) for m in re.finditer(r'(?<!\+)"\$\{\w+\[@\][^}]*\}"', text)]
    assert unguarded == [], unguarded


def test_sigterm_as_training_is_launched_is_forwarded(tmp_path):
    """SIGTERM arrives while srun is being started (between `&` and `TRAIN_PID=$!`, before the step is listed): it is
    still forwarded once the training step exists, and the run saves."""
    code, out, node_log, calls = run_launcher(tmp_path, signal_job=False, env={"FAKE_SIGNAL_AT_LAUNCH": "1"})
    assert "FAKE_TRAIN got SIGTERM" in node_log, (node_log, out)
    assert f"scancel --signal=TERM {JOB_ID}.0" in calls, calls
    assert code == 0, out
