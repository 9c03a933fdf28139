"""A throwaway 2-node SLURM cluster on this one machine, for rehearsing `slurm/train_multinode.sbatch`.

One `munged` (own key and socket), one `slurmctld` and two `slurmd -N n1|n2` run in the foreground as children of
this process, on free ports, with every config/state/spool/log/pid file in one temp folder: nothing in /etc, /run or
/var is touched and the machine's own SLURM/MUNGE (if any) is left alone. Daemons are stopped by process id
(SIGTERM, then SIGKILL), never by name. Needs root (slurmd runs jobs as the submitting user) and the slurm-wlm +
munge packages (`sudo make slurm-setup`).

    with SlurmCluster(tmp_dir) as cluster:
        job_id = cluster.sbatch(["--nodes=2", "slurm/train_multinode.sbatch", ...])
        info = cluster.wait(job_id, timeout=180)   # {"JobState": "COMPLETED", "ExitCode": "0:0", ...}

Also the tiny 2-process training run that test_slurm.py and test_multinode.py share (`write_tiny_run`) and its checks
(`assert_world_size_two`, `finite_metrics`).
"""

from __future__ import annotations

import atexit
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

SBIN_PATHS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "scancel", "sinfo", "squeue")
TERMINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


class SlurmClusterError(RuntimeError):
    """The local cluster could not be brought up; the message carries the daemons' log tails."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_PATHS))


def missing_requirements() -> str | None:
    """Why the local cluster cannot run here (None when it can): not root, or slurm-wlm/munge not installed."""
    missing = [b for b in DAEMONS + CLIENTS if _which(b) is None]
    if missing:
        return f"SLURM/MUNGE not installed (missing {', '.join(missing)})"
    if os.geteuid() != 0:
        return "the local SLURM test cluster needs root (slurmd runs jobs as the submitting user)"
    return None


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports that were free a moment ago (bound together so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SlurmCluster:
    """munged + slurmctld + slurmd × `num_nodes` (nodes n1..nN, `cpus_per_node` CPUs each) under `root`."""

    def __init__(self, root: str | os.PathLike, num_nodes: int = 2, cpus_per_node: int = 1, start_timeout=60.0):
        self.root = Path(root)
        self.nodes = [f"n{i + 1}" for i in range(num_nodes)]
        self.cpus_per_node = cpus_per_node
        self.start_timeout = start_timeout
        self.hostname = socket.gethostname().split(".")[0]  # slurmctld matches the short name
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.env["PATH"] = os.pathsep.join([self.env.get("PATH", ""), *SBIN_PATHS])

    # -- set-up -------------------------------------------------------------------------------------------------
    def _write_files(self) -> None:
        for sub in ("etc", "state", "log", "run", "munge", *(f"spool/{n}" for n in self.nodes)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses keys or folders that others can read or write.
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        ctld_port, *node_ports = free_ports(1 + len(self.nodes))
        r = self.root
        lines = [
            "ClusterName=sapotest",
            f"SlurmctldHost={self.hostname}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: a requeued job may start again after cred_expire + 1 s (default 120 s); 10 s keeps the
            # requeue test short.
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/run/slurmctld.pid",
            f"SlurmdPidFile={r}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill",
            # A requeued job becomes eligible at a BeginTime no event announces; the backfill pass starts it (every
            # 30 s by default).
            "SchedulerParameters=bf_interval=3",
            "InactiveLimit=0",
            "KillWait=5",
            # Keep finished jobs visible to `scontrol show job` (no accounting database, so no sacct).
            "MinJobAge=600",
            "SlurmdTimeout=60",
        ]
        for name, port in zip(self.nodes, node_ports):
            lines.append(
                f"NodeName={name} NodeHostname={self.hostname} NodeAddr=127.0.0.1 Port={port} "
                f"CPUs={self.cpus_per_node} State=UNKNOWN"
            )
        # Pre-emption as on a real shared cluster: a job in `urgent` (higher PriorityTier) pre-empts `debug` jobs on
        # its nodes; they get SIGTERM, GraceTime s to save, and are requeued (PreemptMode=REQUEUE).
        lines += ["PreemptType=preempt/partition_prio", "PreemptMode=REQUEUE"]
        nodes = ",".join(self.nodes)
        lines.append(
            f"PartitionName=debug Nodes={nodes} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=60"
        )
        lines.append(f"PartitionName=urgent Nodes={nodes} MaxTime=INFINITE State=UP PriorityTier=10")
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "wb")  # noqa: SIM115 (closed with the process)
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()

    def start(self) -> SlurmCluster:
        self._write_files()
        atexit.register(self.stop)  # safety net if the caller never reaches stop()
        m = self.root / "munge"
        try:
            self._spawn(
                "munged",
                [_which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                 f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                 f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"],
            )  # fmt: skip
            self._wait_for(lambda: self.munge_socket.exists(), "munged socket")
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            for node in self.nodes:
                self._spawn(f"slurmd-{node}", [_which("slurmd"), "-D", "-N", node, "-f", str(self.conf)])
            self._wait_for(self._all_idle, "all nodes idle in sinfo")
        except BaseException:
            self.stop()
            raise
        return self

    def _all_idle(self) -> bool:
        out = self.run(["sinfo", "--noheader", "--Node", "--format=%N %t"], check=False).stdout
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return all(states.get(n, "").startswith("idle") for n in self.nodes)

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead:
                raise SlurmClusterError(f"daemon(s) exited while waiting for {what}: {dead}\n{self.logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise SlurmClusterError(f"timed out after {self.start_timeout:.0f}s waiting for {what}\n{self.logs()}")

    # -- tear-down ----------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 15.0) -> None:
        """Cancel this cluster's jobs, then stop the daemons (slurmd first, munged last) by pid: SIGTERM, then
        SIGKILL after `timeout`."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            self._cancel_all_jobs(timeout)
        order = [n for n in self.procs if n.startswith("slurmd-")] + ["slurmctld", "munged"]
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()

    def _cancel_all_jobs(self, timeout: float) -> None:
        """scancel every job of this cluster (SLURM_CONF scopes it) and wait for them to leave the nodes, so no
        training process outlives the test."""
        try:
            self.run(["scancel", f"--user={os.getuid()}"], check=False)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not self.run(["squeue", "--noheader", "--format=%i"], check=False).stdout.strip():
                    return
                time.sleep(0.5)
        except (OSError, subprocess.SubprocessError):
            pass

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- use ----------------------------------------------------------------------------------------------------
    def run(self, cmd: list[str], check: bool = True, timeout: float = 30.0, **kw) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster (SLURM_CONF set)."""
        kw.setdefault("env", self.env)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        if check and result.returncode != 0:
            raise SlurmClusterError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, args: list[str], env: dict | None = None, cwd: str | os.PathLike | None = None) -> str:
        """Submit with `sbatch --parsable ARGS` and return the job id."""
        out = self.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd).stdout
        return out.strip().split(";")[0]

    def preempt(self, num_nodes: int | None = None) -> str:
        """Submit a short job to the higher-priority `urgent` partition on `num_nodes` (default: all) nodes, which
        pre-empts the `debug` jobs running there; returns its job id."""
        n = num_nodes or len(self.nodes)
        out = self.root / "urgent-%j.out"
        return self.sbatch([f"--nodes={n}", "--partition=urgent", f"--output={out}", "--wrap", "true"])

    def set_slurmctld_parameters(self, value: str | None) -> None:
        """Set (or, with None, remove) slurm.conf's SlurmctldParameters and make slurmctld re-read it, e.g.
        `preempt_send_user_signal` (SLURM 22.05's name; PreemptParameters=send_user_signal from 23.02 on)."""
        lines = [line for line in self.conf.read_text().splitlines() if not line.startswith("SlurmctldParameters=")]
        if value:
            lines.append(f"SlurmctldParameters={value}")
        # Replaced in one step: a daemon still re-reading it after an earlier reconfigure must never see it empty.
        staged = self.conf.with_suffix(".new")
        staged.write_text("\n".join(lines) + "\n")
        os.replace(staged, self.conf)
        self.run(["scontrol", "reconfigure"])

    def job_info(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, ExitCode, NodeList, StdOut, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", job_id]).stdout
        return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)

    def wait(self, job_id: str, timeout: float) -> dict[str, str]:
        """Poll until the job reaches a terminal state; cancel it and raise TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            if info.get("JobState") in TERMINAL_STATES:
                return info
            time.sleep(1.0)
        self.run(["scancel", job_id], check=False)
        raise TimeoutError(f"job {job_id} not finished after {timeout:.0f}s: {self.job_info(job_id)}")

    def logs(self, tail: int = 30) -> str:
        """Last lines of every daemon log, for error messages."""
        parts = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {path.name} ---\n" + "\n".join(lines))
        return "\n".join(parts)


# -- the tiny multi-node training run shared by test_slurm.py and test_multinode.py -------------------------------
PER_DEVICE_BATCH = 2
TOTAL_BATCH_RE = re.compile(r"Total train batch size \(w\. parallel, distributed & accumulation\) = (\d+)")

# A reward with spread inside every group, so advantages (and the gradients DDP all-reduces) are non-zero even for a
# random model; scripts/gsm8k_sapo.py imports it as a dotted path found on PYTHONPATH.
# SAPO_TEST_REWARD_MARKER (optional): each call appends a line to that file and then sleeps SAPO_TEST_REWARD_SLEEP s,
# so a test can tell which step the ranks are in and signal the job mid-training; neither changes the numbers.
# SAPO_TEST_SAVE_SLEEP (optional): in the first run of a job only (SAPO_RESTART_COUNT 0), every checkpoint save
# appends a line to SAPO_TEST_SAVE_MARKER and then takes that many seconds longer (before trainer_state.json), to
# test a save longer than torchrun's default 30 s shutdown timeout.
REWARD_MODULE = '''
import os
import time

if os.environ.get("SAPO_TEST_SAVE_SLEEP") and os.environ.get("SAPO_RESTART_COUNT", "0") == "0":
    import transformers

    _save_rng_state = transformers.Trainer._save_rng_state

    def _slow_save_rng_state(self, output_dir):
        with open(os.environ["SAPO_TEST_SAVE_MARKER"], "a") as f:
            f.write(f"rank {os.environ.get('RANK', '0')} saving {output_dir}\\n")
        time.sleep(float(os.environ["SAPO_TEST_SAVE_SLEEP"]))
        return _save_rng_state(self, output_dir)

    transformers.Trainer._save_rng_state = _slow_save_rng_state


def length_reward(completions, **kwargs):
    """Completion length in characters / 10 (TRL reward signature)."""
    marker = os.environ.get("SAPO_TEST_REWARD_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write(f"rank {os.environ.get('RANK', '0')}\\n")
        time.sleep(float(os.environ.get("SAPO_TEST_REWARD_SLEEP", "0")))
    return [len(c[-1]["content"] if isinstance(c, list) else c) / 10.0 for c in completions]
'''


def write_tiny_run(
    root: Path, model_path: str | os.PathLike, max_steps: int = 2, use_cpu: bool = True
) -> tuple[Path, dict[str, str]]:
    """Recipe for scripts/gsm8k_sapo.py (tiny model, synthetic GSM8K, float32, a checkpoint every step) and the env
    vars its processes need; returns (recipe path, env). Output goes to root/out."""
    (root / "rewards_for_multinode_test.py").write_text(REWARD_MODULE)
    recipe = root / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
            model_name_or_path: {model_path}
            dataset_name: synthetic
            num_train_examples: 16
            reward_funcs: [rewards_for_multinode_test.length_reward]
            output_dir: {root / "out"}
            per_device_train_batch_size: {PER_DEVICE_BATCH}
            num_generations: 2
            max_completion_length: 8
            learning_rate: 1.0e-3
            max_steps: {max_steps}
            logging_steps: 1
            save_strategy: steps
            save_steps: 1
            report_to: none
            use_cpu: {str(use_cpu).lower()}
            bf16: false
            seed: 0
            log_level: info
            log_level_replica: info
            """)
    )
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return recipe, env


def assert_world_size_two(logs: dict[int, str]) -> None:
    """Both machine ranks' logs come from ONE 2-process job: every process (log_level_replica: info) reports a total
    batch of per-device batch x 2, and the script says 2 processes. Two ranks training alone would report x 1."""
    assert set(logs) == {0, 1}
    for rank, log in logs.items():
        totals = {int(t) for t in TOTAL_BATCH_RE.findall(log)}
        assert totals == {PER_DEVICE_BATCH * 2}, (rank, totals, log[-3000:])
        assert "(2 process(es))" in log and "(1 process(es))" not in log, (rank, log[-3000:])


def finite_metrics(state: dict) -> list[dict]:
    """Training entries of trainer_state.json's log_history; asserts loss and every sapo/* metric are finite (NaN is
    allowed only for the per-sign `_pos`/`_neg` splits: NaN by design when a batch has no token of that sign)."""
    entries = [e for e in state["log_history"] if "loss" in e and "step" in e]
    assert entries, state["log_history"]
    for entry in entries:
        assert math.isfinite(entry["loss"]), entry
        sapo = {k: v for k, v in entry.items() if k.startswith("sapo/")}
        assert {"sapo/gate_mean", "sapo/grad_weight_mean", "sapo/ratio_mean", "sapo/ratio_max"} <= set(sapo), entry
        for key, value in sapo.items():
            if not key.endswith(("_pos", "_neg")):
                assert math.isfinite(value), (key, entry)
    return entries
