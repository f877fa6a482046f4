"""The 3-node Slurm test cluster (.ci/slurm-up): one network namespace, address and hostname per node.

Jobs here run on the shared session cluster; the slurm-down/slurm-up cycle runs on a second, private
cluster (own directory, port, node names, subnet and bridge) so the shared one is never disturbed.
Traffic stays on the clusters' bridges and namespaces."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests import slurm_cluster

pytestmark = pytest.mark.slurm

NODES = 3
QUEUE_WAIT_S = 300  # a job of all nodes waits for other sessions' jobs on the shared cluster


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    if not slurm_cluster.slurm_available() and os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("no Slurm here and not root to start one (.ci/slurm-up)")
    env = slurm_cluster.ensure_cluster()
    if len(slurm_cluster.nodes(env)) < NODES and os.environ.get("OSMI_SLURM_NODES") == "1":
        pytest.skip("single-node cluster asked for (OSMI_SLURM_NODES=1)")
    return env


@pytest.fixture(scope="module")
def node_addrs(cluster) -> dict[str, str]:
    found = dict(slurm_cluster.nodes(cluster))
    assert len(found) >= NODES, f"the test cluster should have {NODES} nodes, has {found}"
    return found


def submit(env: dict[str, str], script: str, out: Path, *args: str) -> str:
    out.parent.joinpath("job.sh").write_text("#!/bin/bash\nset -u\n" + script)
    p = subprocess.run(["sbatch", "--parsable", f"--nodes={NODES}", "--time=2", "-o", str(out), *args,
                        str(out.parent / "job.sh")], env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def run_job(env: dict[str, str], script: str, tmp_path: Path) -> list[str]:
    out = tmp_path / "out.txt"
    job_id = submit(env, script, out)
    try:
        state = slurm_cluster.wait_for_jobs([job_id], timeout_s=QUEUE_WAIT_S, env=env)[job_id]
    finally:  # a job left queued after a failure would hold all nodes later
        subprocess.run(["scancel", job_id], env={**os.environ, **env}, timeout=30)
    assert state == "COMPLETED", out.read_text() if out.exists() else f"job {job_id}: {state}, no output"
    return out.read_text().splitlines()


def test_steps_land_on_every_node_with_its_own_address(cluster, node_addrs, tmp_path):
    # Each task: its node, hostname, eth0 address, and what every node name resolves to there.
    names = " ".join(node_addrs)
    lines = run_job(cluster, f"""
srun --nodes={NODES} --ntasks={NODES} bash -c '
  echo "task $SLURMD_NODENAME $(hostname) $(ip -4 -o addr show dev eth0 | awk "{{print \\$4}}")"
  for n in {names}; do echo "resolve $SLURMD_NODENAME $(getent hosts $n)"; done'
""", tmp_path)
    tasks = [l.split() for l in lines if l.startswith("task ")]
    assert len(tasks) == NODES, lines
    assert len({node for _, node, _, _ in tasks}) == NODES, tasks
    for _, node, hostname, cidr in tasks:
        assert hostname == node
        assert cidr == f"{node_addrs[node]}/24"
    resolved = [l.split() for l in lines if l.startswith("resolve ")]
    assert len(resolved) == NODES * len(node_addrs), lines
    for _, _, addr, name in resolved:
        assert node_addrs[name] == addr


def test_a_step_reaches_a_listener_on_another_node_not_its_loopback(cluster, node_addrs, tmp_path):
    first, *_, last = list(node_addrs)[:NODES]
    port = random.randint(20000, 29999)
    # A server step on the first node (on its own address), a loopback listener in the batch script
    # (also on the first node), and a client step on the last node that tries both.
    lines = run_job(cluster, f"""
srun --overlap -N1 -n1 -w {first} python3 -c '
import socket
s = socket.create_server(("{node_addrs[first]}", {port}))
conn, peer = s.accept()
conn.sendall(("served-by " + socket.gethostname() + " to " + peer[0]).encode())' &
python3 -c '
import socket
s = socket.create_server(("127.0.0.1", {port}))
print("loopback-listener", socket.gethostname(), flush=True)
conn, _ = s.accept()
conn.sendall(b"own-loopback")' &
srun --overlap -N1 -n1 -w {last} python3 -c '
import socket, time
for _ in range(300):  # the server step may still be starting (slow on a loaded machine)
    try:
        print(socket.create_connection(("{first}", {port}), timeout=5).recv(100).decode(), flush=True)
        break
    except ConnectionRefusedError:
        time.sleep(0.1)
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3)
    print("remote-loopback reached")
except OSError:
    print("remote-loopback refused")'
for _ in $(seq 300); do
  python3 -c 'import socket; print(socket.create_connection(("127.0.0.1", {port}), timeout=5).recv(100).decode())' \\
    2>/dev/null && break
  sleep 0.1
done
wait
""", tmp_path)
    assert f"served-by {first} to {node_addrs[last]}" in lines
    assert "remote-loopback refused" in lines
    assert f"loopback-listener {first}" in lines and "own-loopback" in lines


def test_scancel_leaves_no_process_on_any_node(cluster, node_addrs, tmp_path):
    out = tmp_path / "out.txt"
    # Steps on every node, one of them with a child outside its step's main process.
    job_id = submit(cluster, f"""
srun --overlap --nodes={NODES} --ntasks={NODES} sleep 300 &
srun --overlap --nodes={NODES} --ntasks={NODES} bash -c 'sleep 301 & sleep 302' &
sleep 303
""", out)
    names = list(node_addrs)[:NODES]

    def sleeps_per_node() -> dict[str, int]:
        return {n: sum(slurm_cluster.proc_read(p, "comm").strip() == b"sleep"
                       for p in slurm_cluster.job_pids(job_id, n)) for n in names}

    try:
        deadline = time.monotonic() + QUEUE_WAIT_S
        while slurm_cluster.job_state(job_id, env=cluster) == "PENDING":
            assert time.monotonic() < deadline, f"job {job_id} still pending after {QUEUE_WAIT_S} s"
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while min((counts := sleeps_per_node()).values()) < 3:  # sleep 300, 301 and 302 on each node
            assert time.monotonic() < deadline, f"job {job_id} never started its steps everywhere: {counts}"
            time.sleep(0.2)
    finally:
        subprocess.run(["scancel", job_id], env={**os.environ, **cluster}, timeout=30)
    assert slurm_cluster.wait_for_jobs([job_id], timeout_s=60, env=cluster)[job_id] == "CANCELLED"
    deadline = time.monotonic() + 10  # KillWait=5: SIGTERM, then SIGKILL
    while left := {n: slurm_cluster.job_pids(job_id, n) for n in names if slurm_cluster.job_pids(job_id, n)}:
        assert time.monotonic() < deadline, f"processes of cancelled job {job_id} left: {left}"
        time.sleep(0.2)


# ---- slurm-down / slurm-up on a private cluster --------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_state(prefix: str, bridge: str, tag: str) -> dict[str, list[str]]:
    """What a cluster leaves on the host: namespaces, links, /etc/hosts lines, UTS namespace files."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    uts = Path("/run/osmi-uts")
    return {
        "netns": sorted(p.name for p in slurm_cluster.NETNS_DIR.glob(f"{prefix}*")),
        "links": sorted(w.split("@")[0] for l in links.splitlines() if (w := l.split()[1].rstrip(":"))
                        and (w == bridge or w.startswith(f"v{prefix}"))),
        "hosts": [l for l in Path("/etc/hosts").read_text().splitlines() if l.endswith(tag)],
        "uts": sorted(p.name for p in uts.glob(f"{prefix}*")) if uts.is_dir() else [],
    }


@pytest.fixture
def private_dir():
    # Not tmp_path: pytest's folders are private to root, and slurmctld (user slurm) must reach its own.
    path = Path(tempfile.mkdtemp(prefix="osmi-slurm-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="creates namespaces and daemons: root only")
def test_slurm_down_then_up_is_clean(private_dir):
    prefix, bridge = "osmi-t", "br-osmi-t"
    cluster_dir = private_dir / "slurm"
    env = {**os.environ, "OSMI_SLURM_DIR": str(cluster_dir), "OSMI_SLURM_PORT": str(free_port()),
           "OSMI_SLURM_NODES": "2", "OSMI_SLURM_PREFIX": prefix, "OSMI_SLURM_NET": "10.77.9",
           "OSMI_SLURM_BRIDGE": bridge, "SLURM_CONF": str(cluster_dir / "slurm.conf")}
    tag = f"# osmi-slurm:{cluster_dir.resolve()}"
    up_state = {"netns": ["osmi-t1", "osmi-t2"], "links": sorted([bridge, "vosmi-t1", "vosmi-t2"]),
                "hosts": [f"10.77.9.11\tosmi-t1\t{tag}", f"10.77.9.12\tosmi-t2\t{tag}"],
                "uts": ["osmi-t1", "osmi-t2"]}
    nothing = {"netns": [], "links": [], "hosts": [], "uts": []}
    assert host_state(prefix, bridge, tag) == nothing, "leftovers of an earlier run"

    def script(name: str) -> subprocess.CompletedProcess:
        p = subprocess.run([str(slurm_cluster.REPO / ".ci" / name)], env=env, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return p

    try:
        for _ in range(2):  # up, down, and the same again: the second round starts from the first's rest
            script("slurm-up")
            assert host_state(prefix, bridge, tag) == up_state
            assert slurm_cluster.nodes(env) == [("osmi-t1", "10.77.9.11"), ("osmi-t2", "10.77.9.12")]
            script("slurm-down")
            assert host_state(prefix, bridge, tag) == nothing
            assert not any(f"-f {env['SLURM_CONF']}" in slurm_cluster.proc_read(int(p.name), "cmdline")
                           .replace(b"\0", b" ").decode(errors="replace")
                           for p in Path("/proc").iterdir() if p.name.isdigit())
    finally:
        subprocess.run([str(slurm_cluster.REPO / ".ci" / "slurm-down")], env=env, capture_output=True,
                       timeout=120)
