"""slurm/train_multinode.sbatch on a real (local, 2-node) SLURM cluster: one 2-process job across both nodes.

The cluster (tests/slurm_cluster.py) needs root and slurm-wlm + munge (`sudo make slurm-setup`); elsewhere the test
skips and says so. The jobs train scripts/gsm8k_sapo.py on the tiny Llama, synthetic GSM8K, CPU/gloo DDP.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import (
    SlurmCluster,
    assert_world_size_two,
    finite_metrics,
    free_ports,
    missing_requirements,
    write_tiny_run,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = REPO_ROOT / "slurm" / "train_multinode.sbatch"
ACCEL_CONFIG = "accelerate_configs/cpu_2proc_ddp.yaml"  # MULTI_GPU + use_cpu: gloo DDP; sizes come from SLURM
JOB_TIMEOUT = 150  # s per job; a 2-step tiny run takes ~45 s on 2 shared cores


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A 2-node cluster (n1, n2 on this host) for the whole session; daemons are stopped by pid afterwards."""
    why = missing_requirements()
    if why:
        pytest.skip(f"{why}. Enable with `sudo make slurm-setup` (scripts/setup_slurm.sh), then run pytest as root.")
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def submit(cluster: SlurmCluster, root: Path, recipe: Path, env: dict, *extra: str) -> tuple[str, dict, float]:
    """sbatch the launcher on both nodes and wait; return (job id, `scontrol show job` fields, wall seconds)."""
    start = time.monotonic()
    job_id = cluster.sbatch(
        ["--nodes=2", f"--output={root}/slurm-%j.out", str(LAUNCHER), ACCEL_CONFIG, str(recipe), *extra],
        env=env,
        cwd=REPO_ROOT,
    )
    info = cluster.wait(job_id, timeout=JOB_TIMEOUT)
    wall = time.monotonic() - start
    if (info["JobState"], info["ExitCode"]) != ("COMPLETED", "0:0"):
        pytest.fail(f"job {job_id}: {info['JobState']} {info['ExitCode']}\n{job_report(root, job_id)}")
    return job_id, info, wall


def job_report(root: Path, job_id: str) -> str:
    parts = []
    for path in [root / f"slurm-{job_id}.out", *sorted((root / "logs" / job_id).glob("*.log"))]:
        if path.exists():
            parts.append(f"--- {path.name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
    return "\n".join(parts)


def node_logs(root: Path, job_id: str) -> dict[int, str]:
    """The launcher's per-node logs, checked to come from machine rank 0 on n1 and rank 1 on n2."""
    logs = {}
    for rank in (0, 1):
        path = root / "logs" / job_id / f"node{rank}.log"
        assert path.exists(), f"no log for machine rank {rank}: {path}\n{job_report(root, job_id)}"
        logs[rank] = path.read_text(errors="replace")
        assert re.search(rf"machine_rank={rank}/2 node=n{rank + 1} ", logs[rank]), logs[rank][-3000:]
    return logs


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(2 * JOB_TIMEOUT + 90)
def test_sbatch_two_nodes_trains_one_job_then_resumes(slurm_cluster, tmp_path, tiny_model_path):
    # use_cpu: false on purpose: on GPU-less nodes the launcher itself must make the processes join one CPU (gloo)
    # group; without that, each node would silently train alone (world size 1, caught below).
    recipe, env = write_tiny_run(tmp_path, tiny_model_path, max_steps=2, use_cpu=False)
    # GPUS_PER_NODE=0: CPU-only nodes even where the host has GPUs, so the expected world size is 2 everywhere.
    env |= {"LOG_DIR": str(tmp_path / "logs"), "GPUS_PER_NODE": "0"}
    out = tmp_path / "out"

    job_id, info, wall = submit(slurm_cluster, tmp_path, recipe, env)
    print(f"job {job_id} on {info['NodeList']}: {info['JobState']} {info['ExitCode']} in {wall:.1f}s")
    assert info["NumNodes"] == "2"
    assert_world_size_two(node_logs(tmp_path, job_id))

    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert [e["step"] for e in finite_metrics(state)] == [1, 2]
    assert (out / "checkpoint-2" / "trainer_state.json").exists()

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert all(p.isfinite().all() for p in model.parameters())

    # Same job again, two more steps, resumed from the first job's last checkpoint.
    first_ckpt = out / "checkpoint-1" / "trainer_state.json"
    mtime_before = first_ckpt.stat().st_mtime_ns
    extra = ("--max_steps", "4", "--resume_from_checkpoint", str(out / "checkpoint-2"))
    job2, info2, wall2 = submit(slurm_cluster, tmp_path, recipe, env, *extra)
    print(f"resumed job {job2}: {info2['JobState']} {info2['ExitCode']} in {wall2:.1f}s")
    logs2 = node_logs(tmp_path, job2)
    assert_world_size_two(logs2)
    for log in logs2.values():
        assert re.search(r"Resuming training from checkpoint with epoch \d+ and global step 2\n", log), log[-3000:]

    state2 = json.loads((out / "trainer_state.json").read_text())
    assert state2["global_step"] == 4
    # Steps 1-2 come from the checkpoint's history and 3-4 were trained now; a restart from step 0 would have
    # rewritten checkpoint-1.
    assert [e["step"] for e in finite_metrics(state2)] == [1, 2, 3, 4]
    assert (out / "checkpoint-4").is_dir()
    assert first_ckpt.stat().st_mtime_ns == mtime_before
    AutoModelForCausalLM.from_pretrained(out)


def test_launcher_help_and_refuses_to_run_outside_slurm():
    """Run directly, the launcher prints its documentation; without a job it refuses instead of training."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    helped = subprocess.run([str(LAUNCHER), "--help"], capture_output=True, text=True, env=env, timeout=30)
    assert helped.returncode == 0, helped.stderr
    for var in ("GPUS_PER_NODE", "PROCS_PER_NODE", "MAIN_ADDR", "MAIN_PORT", "VLLM_SERVER", "LOG_DIR", "SCRIPT"):
        assert f"\n  {var} " in helped.stdout, var
    assert "#SBATCH" not in helped.stdout and "sbatch --nodes=N" in helped.stdout
    refused = subprocess.run(
        [str(LAUNCHER), ACCEL_CONFIG, "x.yaml"], capture_output=True, text=True, env=env, timeout=30
    )
    assert refused.returncode == 2 and "not inside a SLURM job" in refused.stderr


# Stand-ins for `trl vllm-serve` (answers /health, the route TRL's VLLMClient polls, until SIGTERM) and the training script (records what it got), to
# check the launcher's VLLM_SERVER=1 wiring where vLLM and GPUs are not available.
FAKE_TRL = """#!{python}
import http.server, json, os, signal, socket, sys
print("FAKE_VLLM", json.dumps(sys.argv[1:]), os.environ.get("SLURMD_NODENAME"), flush=True)
port = int(sys.argv[sys.argv.index("--port") + 1])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
signal.signal(signal.SIGTERM, lambda *a: (print("FAKE_VLLM stopped", flush=True), os._exit(0)))
http.server.HTTPServer((sys.argv[sys.argv.index("--host") + 1], port), Health).serve_forever()
"""
FAKE_SCRIPT = """import json, os, sys
print("FAKE_TRAIN", json.dumps(sys.argv[1:]), os.environ["WORLD_SIZE"], os.environ.get("SLURMD_NODENAME"))
"""


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(JOB_TIMEOUT + 60)
def test_vllm_server_on_last_node_and_trainers_pointed_at_it(slurm_cluster, tmp_path):
    fake_trl = tmp_path / "fake_trl"
    fake_trl.write_text(FAKE_TRL.format(python=sys.executable))
    fake_trl.chmod(0o755)
    (tmp_path / "fake_train.py").write_text(FAKE_SCRIPT)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: my-org/my-model  # served by vLLM\nbf16: false\n")
    (vllm_port,) = free_ports(1)
    env = {"LOG_DIR": str(tmp_path / "logs"), "GPUS_PER_NODE": "0", "VLLM_SERVER": "1", "VLLM_PORT": str(vllm_port),
           "TRL": str(fake_trl), "SCRIPT": str(tmp_path / "fake_train.py"), "VLLM_ARGS": "--data_parallel_size 1"}  # fmt: skip
    job_id, info, wall = submit(slurm_cluster, tmp_path, recipe, env, "--max_steps", "3")
    print(f"vLLM-server job {job_id}: {info['JobState']} {info['ExitCode']} in {wall:.1f}s")

    job_logs = tmp_path / "logs" / job_id
    assert sorted(p.name for p in job_logs.glob("*.log")) == ["node0.log", "vllm.log"]  # 1 training node + server
    vllm_log = (job_logs / "vllm.log").read_text()
    served = json.loads(re.search(r"FAKE_VLLM (\[.*\]) n2\n", vllm_log).group(1))
    # Bound to the server node's NodeAddr (what the trainers connect to), not to every interface.
    assert served == ["vllm-serve", "--model", "my-org/my-model", "--host", "127.0.0.1", "--port", str(vllm_port),
                      "--data_parallel_size", "1"]  # fmt: skip
    # The launcher stops the server step after training (SIGTERM to its srun: SLURM cancels the step).
    assert "FAKE_VLLM stopped" in vllm_log or f"STEP {job_id}.0 ON n2 CANCELLED" in vllm_log, vllm_log

    node0 = (job_logs / "node0.log").read_text()
    assert "machine_rank=0/1 node=n1 " in node0
    match = re.search(r"FAKE_TRAIN (\[.*\]) (\d+) n1\n", node0)
    assert match, node0[-3000:]
    args, world = json.loads(match.group(1)), int(match.group(2))
    assert world == 1
    assert args == ["--config", str(recipe), "--max_steps", "3", "--use_vllm", "true", "--vllm_mode", "server",
                    "--vllm_server_host", "127.0.0.1", "--vllm_server_port", str(vllm_port)]  # fmt: skip


# Stand-in training for the server tests: on SIGTERM it asks the (stand-in) vLLM server for /health, as the trainers'
# last generation and weight sync would, and "saves" only if it answers.
FAKE_ACCELERATE_WITH_SERVER = """#!/bin/bash
echo "FAKE_TRAIN restart=$SAPO_RESTART_COUNT args: $*"
if [[ "$SAPO_RESTART_COUNT" != 0 ]]; then echo "FAKE_TRAIN finished"; exit 0; fi
report() { echo "$1 restart=$SAPO_RESTART_COUNT step=7${2:+ path=$2}" >>"$SAPO_RUN_STATUS_FILE"; }
on_stop() {
    trap '' TERM USR1
    sleep 2  # the step and the save
    args=" $* "; host=${args#* --vllm_server_host }; port=${args#* --vllm_server_port }
    if python3 -c "import urllib.request as u; u.urlopen('http://${host%% *}:${port%% *}/health', timeout=5)"; then
        echo "FAKE_TRAIN server up at save"; mkdir -p "$FAKE_CHECKPOINT"; report checkpoint "$FAKE_CHECKPOINT"
    else
        echo "FAKE_TRAIN server down at save"
    fi
    report sigterm_stop; exit 1
}
trap 'on_stop "$@"' TERM
report train_begin
touch "$FAKE_READY"
for i in $(seq 1 1200); do sleep 0.1; done
exit 3
"""


@pytest.fixture
def preempt_send_user_signal(slurm_cluster):
    """The cluster sends a job's --signal (B:TERM: the batch script) at a pre-emption instead of SIGTERM to every
    step, for one test."""
    slurm_cluster.set_slurmctld_parameters("preempt_send_user_signal")
    yield slurm_cluster
    slurm_cluster.set_slurmctld_parameters(None)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(2 * JOB_TIMEOUT)
@pytest.mark.parametrize(("stop", "restarts"), [("user-stop", 0), ("pre-emption", 1)])
def test_vllm_server_serves_until_the_trainers_saved(preempt_send_user_signal, tmp_path, stop, restarts):
    """VLLM_SERVER=1: a user's stop through the batch script (`scancel --batch --signal=TERM <job>`), and a
    pre-emption on a cluster with preempt_send_user_signal (PreemptParameters=send_user_signal from SLURM 23.02),
    reach the training step only: the server still answers when the trainers save; the stop is not requeued, the
    pre-emption is (and the restart trains against the server again)."""
    cluster = preempt_send_user_signal
    fake_trl, fake = tmp_path / "fake_trl", tmp_path / "fake_accelerate"
    fake_trl.write_text(FAKE_TRL.format(python=sys.executable))
    fake.write_text(FAKE_ACCELERATE_WITH_SERVER)
    for exe in (fake_trl, fake):
        exe.chmod(0o755)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: my-org/my-model\n")
    (vllm_port,) = free_ports(1)
    ready = tmp_path / "ready"
    env = {"LOG_DIR": str(tmp_path / "logs"), "GPUS_PER_NODE": "0", "VLLM_SERVER": "1", "VLLM_PORT": str(vllm_port),
           "TRL": str(fake_trl), "ACCELERATE": str(fake), "FAKE_READY": str(ready),
           "FAKE_CHECKPOINT": str(tmp_path / "out" / "checkpoint-7"), "SBATCH_SIGNAL": "B:TERM"}  # fmt: skip
    job_id = cluster.sbatch(
        ["--nodes=2", f"--output={tmp_path}/slurm-%j.out", str(LAUNCHER), ACCEL_CONFIG, str(recipe)],
        env=env,
        cwd=REPO_ROOT,
    )
    wait_for(ready.exists, 60, "training")
    if stop == "pre-emption":
        cluster.preempt()
    else:
        cluster.run(["scancel", "--batch", "--signal=TERM", job_id])
    info = cluster.wait(job_id, timeout=2 * JOB_TIMEOUT - 30)
    batch_out = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", str(restarts)), (
        info,
        batch_out,
    )
    assert "save window: SIGTERM 60s before the time limit" in batch_out, batch_out  # B:TERM: SLURM's 60 s
    node0 = (tmp_path / "logs" / job_id / "node0.log").read_text()
    assert "FAKE_TRAIN server up at save" in node0, node0
    if restarts:
        assert "FAKE_TRAIN finished" in node0.split(" restart=1\n")[1], node0


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("nodes", "config", "env", "message"),
    [
        (2, "accelerate_configs/single_gpu.yaml", {}, "has distributed_type 'NO'; multi-node needs MULTI_GPU"),
        (1, ACCEL_CONFIG, {"VLLM_SERVER": "1"}, "VLLM_SERVER=1 needs at least 2 nodes"),
        (2, ACCEL_CONFIG, {"GPUS_PER_NODE": "eight"}, "GPUS_PER_NODE must be a number"),
        (2, ACCEL_CONFIG, {"SBATCH_SIGNAL": "B:USR1@300"}, "SBATCH_SIGNAL='B:USR1@300' cannot work"),
        (2, ACCEL_CONFIG, {"SBATCH_SIGNAL": "TERM@300"}, "SBATCH_SIGNAL='TERM@300' cannot work"),
        pytest.param(
            2,
            "accelerate_configs/multi_gpu.yaml",
            {},
            "no GPUs visible on",
            marks=pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host has GPUs"),
        ),
    ],
    ids=[
        "single-process-config",
        "vllm-one-node",
        "bad-gpus-per-node",
        "usr1-signal",
        "signal-without-b",
        "gpu-run-without-gres",
    ],
)
def test_launcher_rejects_unusable_settings(slurm_cluster, tmp_path, nodes, config, env, message):
    """Settings that cannot give a multi-node run fail the job at once with a message, before any training."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: x\n")
    job_id = slurm_cluster.sbatch(
        [f"--nodes={nodes}", f"--output={tmp_path}/slurm-%j.out", str(LAUNCHER), config, str(recipe)],
        env={"LOG_DIR": str(tmp_path / "logs"), **env},
        cwd=REPO_ROOT,
    )
    info = slurm_cluster.wait(job_id, timeout=60)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0"), info
    assert message in (tmp_path / f"slurm-{job_id}.out").read_text()
    assert not (tmp_path / "logs" / job_id).exists()  # nothing was launched


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def max_weight_diff(dir_a: Path, dir_b: Path) -> float:
    from safetensors.torch import load_file

    a, b = load_file(dir_a / "model.safetensors"), load_file(dir_b / "model.safetensors")
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


REQUEUE_STEPS = 4


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(4 * JOB_TIMEOUT)
def test_preempted_job_requeues_and_resumes_bit_exact(slurm_cluster, tmp_path, tiny_model_path):
    """A real pre-emption mid-training: a job in the higher-priority partition needs both nodes → SLURM sends SIGTERM
    to the training step (GraceTime 60 s) → the trainers checkpoint and stop → the job is requeued → SLURM restarts it
    (same job id) after the urgent job → the unchanged command resumes from that checkpoint by itself and finishes at
    the planned step, with the same losses and weights, bit for bit, as the same command run without interruption."""
    # save_steps 100: the only checkpoint before the end can be the one SIGTERM makes.
    flags = ("--max_steps", str(REQUEUE_STEPS), "--save_steps", "100")
    roots = {name: tmp_path / name for name in ("uninterrupted", "requeued")}
    envs = {}
    for name, root in roots.items():
        root.mkdir()
        recipe, env = write_tiny_run(root, tiny_model_path)
        envs[name] = env | {"LOG_DIR": str(root / "logs"), "GPUS_PER_NODE": "0"}
    assert (roots["uninterrupted"] / "recipe.yaml").read_text().replace("uninterrupted", "requeued") == (
        roots["requeued"] / "recipe.yaml"
    ).read_text()  # the same run but for output_dir

    ref_job, _, ref_wall = submit(slurm_cluster, roots["uninterrupted"], roots["uninterrupted"] / "recipe.yaml",
                                  envs["uninterrupted"], *flags)  # fmt: skip
    print(f"uninterrupted job {ref_job}: {ref_wall:.1f}s")

    root = roots["requeued"]
    marker = root / "reward_calls"  # one line per reward call per rank: 2 lines per step
    env = envs["requeued"] | {"SAPO_TEST_REWARD_MARKER": str(marker), "SAPO_TEST_REWARD_SLEEP": "1"}
    start = time.monotonic()
    job_id = slurm_cluster.sbatch(
        ["--nodes=2", f"--output={root}/slurm-%j.out", str(LAUNCHER), ACCEL_CONFIG, str(root / "recipe.yaml"),
         *flags], env=env, cwd=REPO_ROOT)  # fmt: skip
    # Both ranks are inside step 2 (its rewards): pre-empt the job.
    wait_for(lambda: marker.exists() and len(marker.read_text().splitlines()) >= 4, JOB_TIMEOUT, "step 2")
    urgent = slurm_cluster.preempt()
    signalled = time.monotonic() - start
    info = slurm_cluster.wait(job_id, timeout=2 * JOB_TIMEOUT)
    wall = time.monotonic() - start
    report = job_report(root, job_id)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), (info, report)

    assert slurm_cluster.job_info(urgent)["JobState"] == "COMPLETED"
    batch_out = (root / f"slurm-{job_id}.out").read_text()
    assert f"job {job_id} pre-empted at" in batch_out, batch_out
    assert "requeueing job" in batch_out and "restart 1 of job" in batch_out, batch_out
    logs = node_logs(root, job_id)
    assert_world_size_two(logs)
    resumed_at = set()
    for log in logs.values():
        first, second = log.split(" restart=1\n")  # both runs append to the same per-node log
        assert "restart=0" in first and "Resuming training" not in first, first[-3000:]
        resumed_at |= {int(s) for s in re.findall(r"Resuming training from checkpoint with epoch \d+ and global step (\d+)\n", second)}  # fmt: skip
    (step,) = resumed_at  # both ranks resumed from the same step, saved on SIGTERM mid-run
    assert 2 <= step < REQUEUE_STEPS, step
    out, ref_out = root / "out", roots["uninterrupted"] / "out"
    assert (out / f"checkpoint-{step}" / "trainer_state.json").exists()

    state = json.loads((out / "trainer_state.json").read_text())
    ref_state = json.loads((ref_out / "trainer_state.json").read_text())
    assert state["global_step"] == ref_state["global_step"] == REQUEUE_STEPS
    losses = {e["step"]: e["loss"] for e in finite_metrics(state)}
    ref_losses = {e["step"]: e["loss"] for e in finite_metrics(ref_state)}
    assert list(losses) == list(range(1, REQUEUE_STEPS + 1))
    assert losses == ref_losses  # exact, including the steps trained after the restart
    diff = max_weight_diff(out, ref_out)
    print(f"requeued job {job_id}: pre-empted at {signalled:.1f}s, stopped after step {step}, restarted, finished "
          f"step {REQUEUE_STEPS} in {wall:.1f}s (uninterrupted: {ref_wall:.1f}s); max |w - w_ref| = {diff}")  # fmt: skip
    assert diff == 0.0


# Stand-in for `accelerate launch`: the first run reports that training began, waits for SIGTERM, then (machine rank 0
# after FAKE_SAVE_SECONDS, ignoring further signals as a save in progress would) reports a complete checkpoint and its
# stop (as trl_sapo's CheckpointCompletionCallback does) and exits 1, as torchrun's agent does after any signal; a
# restart finishes at once.
FAKE_ACCELERATE = """#!/bin/bash
echo "FAKE_TRAIN restart=$SAPO_RESTART_COUNT args: $*"
if [[ "$SAPO_RESTART_COUNT" != 0 ]]; then echo "FAKE_TRAIN finished"; exit 0; fi
report() { [[ $SLURM_NODEID != 0 ]] || echo "$1 restart=$SAPO_RESTART_COUNT step=7${2:+ path=$2}" >>"$SAPO_RUN_STATUS_FILE"; }
on_stop() {
    trap '' TERM USR1
    echo "FAKE_TRAIN got $1"
    [[ $SLURM_NODEID != 0 ]] || sleep "$FAKE_SAVE_SECONDS"
    mkdir -p "$FAKE_CHECKPOINT"
    report checkpoint "$FAKE_CHECKPOINT"; report sigterm_stop; exit 1
}
trap 'on_stop SIGTERM' TERM
trap 'on_stop SIGUSR1' USR1  # the trap's fallback; torchrun's agent and the trainers handle it like SIGTERM
report train_begin
touch "$FAKE_READY.$SLURM_NODEID"
for i in $(seq 1 1200); do sleep 0.1; done
exit 3
"""
FAILING_CLIENT = '#!/bin/bash\necho "$(basename $0): error: Unable to contact slurm controller" >&2\nexit 1\n'
# `scontrol show job` fails on its first call (slurmctld busy), everything else is the real scontrol.
SCONTROL_FAILING_ONCE = """#!/bin/bash
if [[ $1 == show && $2 == job && ! -e "$FAKE_FAILED_ONCE" ]]; then
    touch "$FAKE_FAILED_ONCE"; echo "scontrol: error: Socket timed out on send/recv operation" >&2; exit 1
fi
exec {scontrol} "$@"
"""
TIME_LIMIT = ("--time=2", "60")  # sbatch --time (minutes), SBATCH_SIGNAL lead: SLURM warns 30-60 s after the start


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(2 * JOB_TIMEOUT)
@pytest.mark.parametrize(
    ("stop", "state", "restarts", "slurmctld_down_in_trap", "save_seconds"),
    [("time-limit", "COMPLETED", 1, False, 8), ("scancel", "CANCELLED", 0, False, 0),
     ("scancel --signal=TERM", "COMPLETED", 0, False, 8), ("scancel --batch --signal=TERM", "COMPLETED", 0, False, 8),
     ("time-limit", "COMPLETED", 1, True, 0), ("pre-emption", "COMPLETED", 1, False, 0)],
    ids=["time-limit-requeues", "cancel-stays-cancelled", "user-stop-of-the-steps", "user-stop-through-the-batch-script",
         "trap-without-squeue-scancel", "pre-emption-with-busy-slurmctld-and-user-time-format"],
)  # fmt: skip
def test_launcher_requeues_on_time_limit_and_preemption_but_not_on_cancel_or_user_stop(
    slurm_cluster, tmp_path, stop, state, restarts, slurmctld_down_in_trap, save_seconds
):
    """With a stand-in for the training on both nodes, the job's end for each way it can be stopped:

    * its real time limit (`--time=2`, `SBATCH_SIGNAL=B:TERM@60`: SIGTERM to the batch script only): the launcher
      passes it to the training step, requeues, and the restart appends the checkpoint this job saved (not `auto`,
      and not the one named at submission); also with `squeue` and `scancel` failing inside the batch script
      (slurmctld unreachable), where SIGUSR1 through srun and the slurmds still reaches the training;
    * a real pre-emption (GraceTime: SIGTERM to the steps) while the first `scontrol show job` fails and the user
      exported SLURM_TIME_FORMAT: still requeued;
    * a plain `scancel <job>` after the checkpoint: stays CANCELLED, no restart (SLURM SIGTERMs the batch script too
      and `scontrol requeue` accepts a completing job);
    * a user's stop, `scancel --signal=TERM <job>` (steps) or `scancel --batch --signal=TERM <job>` (through the
      launcher): checkpoint, not requeued, COMPLETED 0:0 although torchrun exits 1 after a signal, and although the
      other node's torchrun exits 1 while machine rank 0 still saves (8 s: srun --kill-on-bad-exit must not cut it)."""
    try:
        _stop_job_and_check(
            slurm_cluster, tmp_path / "run1", stop, state, restarts, slurmctld_down_in_trap, save_seconds
        )
    except AssertionError as failure:
        # Seen once in three full runs of the slurm tests, under the whole suite's load: in the user's stop of the steps
        # one node's wrapper ended with status 255 and nothing in its log (cause not found; 3 repeats alone and a whole slurm run passed), so
        # srun's --kill-on-bad-exit cut the other node's save. Only that signature is run once more; d3a2755's sbatch
        # still fails both runs (its nodes exit 1 after the signal, not 255).
        if "Exited with exit code 255" not in str(failure):
            raise
        _stop_job_and_check(
            slurm_cluster, tmp_path / "run2", stop, state, restarts, slurmctld_down_in_trap, save_seconds
        )


def _stop_job_and_check(slurm_cluster, tmp_path, stop, state, restarts, slurmctld_down_in_trap, save_seconds):
    tmp_path.mkdir()
    fake = tmp_path / "fake_accelerate"
    fake.write_text(FAKE_ACCELERATE)
    fake.chmod(0o755)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: x\n")
    ready, checkpoint = tmp_path / "ready", tmp_path / "out" / "checkpoint-7"
    env = {"LOG_DIR": str(tmp_path / "logs"), "GPUS_PER_NODE": "0", "ACCELERATE": str(fake), "FAKE_READY": str(ready),
           "FAKE_SAVE_SECONDS": str(save_seconds), "FAKE_CHECKPOINT": str(checkpoint)}  # fmt: skip
    time_limit = []
    if stop == "time-limit":
        time_limit, env["SBATCH_SIGNAL"] = [TIME_LIMIT[0]], f"B:TERM@{TIME_LIMIT[1]}"
    (tmp_path / "bin").mkdir()
    if slurmctld_down_in_trap:
        for name in ("squeue", "scancel"):
            (tmp_path / "bin" / name).write_text(FAILING_CLIENT)
            (tmp_path / "bin" / name).chmod(0o755)
    if stop == "pre-emption":
        (tmp_path / "bin" / "scontrol").write_text(
            SCONTROL_FAILING_ONCE.format(scontrol=shutil.which("scontrol", path=slurm_cluster.env["PATH"]))
        )
        (tmp_path / "bin" / "scontrol").chmod(0o755)
        env |= {"FAKE_FAILED_ONCE": str(tmp_path / "failed_once"), "SLURM_TIME_FORMAT": "%d.%m. %H:%M"}
    env["PATH"] = f"{tmp_path / 'bin'}:{slurm_cluster.env['PATH']}"
    job_id = slurm_cluster.sbatch(
        ["--nodes=2", *time_limit, f"--output={tmp_path}/slurm-%j.out", str(LAUNCHER), ACCEL_CONFIG, str(recipe),
         "--resume_from_checkpoint", "old/checkpoint-5"], env=env, cwd=REPO_ROOT)  # fmt: skip
    wait_for(lambda: all(Path(f"{ready}.{rank}").exists() for rank in (0, 1)), 60, "both nodes training")
    if stop == "pre-emption":
        slurm_cluster.preempt()
    elif stop != "time-limit":
        slurm_cluster.run([*stop.split(), job_id])
    info = slurm_cluster.wait(job_id, timeout=2 * JOB_TIMEOUT - 30)
    batch_out = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert (info["JobState"], info["Restarts"]) == (state, str(restarts)), (info, batch_out)
    if state == "COMPLETED":
        assert info["ExitCode"] == "0:0", (info, batch_out)
    if stop != "scancel":  # (a cancelled job's steps cannot be signalled: the trap falls back to SIGUSR1)
        assert ("SIGUSR1 to srun" in batch_out) == slurmctld_down_in_trap, batch_out
    assert ("requeueing job" in batch_out) == bool(restarts), batch_out
    for rank in (0, 1):
        log = (tmp_path / "logs" / job_id / f"node{rank}.log").read_text()
        first, *rest = log.split(" restart=1\n")  # the launcher's header line of the restarted run
        # the training step got the signal (SLURM's own SIGTERM too, at a cancel or pre-emption)
        assert re.search(r"FAKE_TRAIN got SIG(TERM|USR1)", first), log
        if slurmctld_down_in_trap:
            assert "FAKE_TRAIN got SIGUSR1" in first, log
        if restarts:  # the restart continues from the checkpoint this job saved, not from the one named at submission
            (second,) = rest
            assert f"--resume_from_checkpoint old/checkpoint-5 --resume_from_checkpoint {checkpoint}\n" in second, (
                second
            )
            assert "FAKE_TRAIN finished" in second, second
        else:
            assert rest == [], log
    if stop.startswith("scancel --"):
        assert "a user's stop" in batch_out, batch_out
    if stop == "scancel":
        assert re.search(r"job \d+ is (CANCELLED|COMPLETING), not RUNNING", batch_out), batch_out


SLOW_SAVE_SECONDS = 35  # > torchrun's default 30 s between its SIGTERM and SIGKILL, < the partition's GraceTime 60 s


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(3 * JOB_TIMEOUT)
def test_sigterm_during_a_slow_save_keeps_that_checkpoint_and_resumes_from_it(
    preempt_send_user_signal, tmp_path, tiny_model_path
):
    """SIGTERM to the batch script (a pre-emption with preempt_send_user_signal: the job's B:TERM, the same path as
    the time-limit warning) arrives while the trainers write checkpoint-1 and the save takes 35 s. The launcher gives
    torchrun a shutdown timeout derived from the 180 s lead time (not its default 30 s, which would SIGKILL the
    workers mid-save), the trainers finish that save and stop right after it (no step 2), the checkpoint is marked
    complete, the job is requeued and the restart resumes from checkpoint-1 and finishes."""
    slurm_cluster = preempt_send_user_signal
    recipe, env = write_tiny_run(tmp_path, tiny_model_path, max_steps=3)
    saves = tmp_path / "saves"
    env |= {"LOG_DIR": str(tmp_path / "logs"), "GPUS_PER_NODE": "0", "SAPO_TEST_SAVE_SLEEP": str(SLOW_SAVE_SECONDS),
            "SAPO_TEST_SAVE_MARKER": str(saves)}  # fmt: skip
    start = time.monotonic()
    job_id = slurm_cluster.sbatch(
        ["--nodes=2", f"--output={tmp_path}/slurm-%j.out", str(LAUNCHER), ACCEL_CONFIG, str(recipe)],
        env=env,
        cwd=REPO_ROOT,
    )
    wait_for(lambda: saves.exists() and len(saves.read_text().splitlines()) >= 2, JOB_TIMEOUT, "both ranks saving")
    slurm_cluster.preempt()
    signalled = time.monotonic() - start
    info = slurm_cluster.wait(job_id, timeout=2 * JOB_TIMEOUT)
    wall = time.monotonic() - start
    report = job_report(tmp_path, job_id)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), (info, report)
    assert all(line.endswith("checkpoint-1") for line in saves.read_text().splitlines()), saves.read_text()

    batch_out = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=160s" in batch_out, batch_out
    out = tmp_path / "out"
    assert f"this run saved {out / 'checkpoint-1'}" in batch_out, batch_out
    status = (tmp_path / "logs" / job_id / "run_status").read_text().splitlines()
    first_run = [line for line in status if " restart=0 " in line]
    assert first_run == ["train_begin restart=0 step=0", f"checkpoint restart=0 step=1 path={out / 'checkpoint-1'}",
                         "sigterm_stop restart=0 step=1"], status  # fmt: skip
    logs = node_logs(tmp_path, job_id)
    assert_world_size_two(logs)
    for log in logs.values():
        first, second = log.split(" restart=1\n")
        assert "Resuming training" not in first, first[-3000:]
        assert re.search(r"Resuming training from checkpoint with epoch \d+ and global step 1\n", second), second[
            -3000:
        ]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [e["step"] for e in finite_metrics(state)] == [1, 2, 3]
    assert (out / "checkpoint-1" / "checkpoint_complete.json").exists()
    print(f"slow-save job {job_id}: signalled at {signalled:.1f}s during the {SLOW_SAVE_SECONDS}s save of "
          f"checkpoint-1, resumed from it, done in {wall:.1f}s")  # fmt: skip
