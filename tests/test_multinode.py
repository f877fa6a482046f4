"""Multi-node runs: the placement of shards, balancer and clients over a job's nodes
(osmi.placement), its checks in the grid, the job scripts it renders, the node
launchers, and (on the 3-node namespaced test cluster) whole runs, cancels and a
shard the balancer cannot reach."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from math import ceil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osmi_ee.ee.config import GridError, load_grid
from osmi_ee.ee.generate import generate
from osmi_ee.osmi.job_nodes import node_addr, ordered
from osmi_ee.osmi.node_shards import bind_host
from osmi_ee.osmi.placement import NODE_ROLES, PlacementError, nodes_needed, place, shard_capacity

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------- placement


def test_two_nodes_of_four_gpus_and_a_client_node():
    p = place(8, 6, 3, shards_per_node=4, gpus_per_node=4, client_nodes="own")
    assert p.shard_nodes == (0, 0, 0, 0, 1, 1, 1, 1)
    assert p.client_nodes == (2,) * 6
    assert p.balancer_node == 0 and p.gpus_per_node == 4 and p.multi_node


def test_shards_spread_evenly_so_every_node_asks_for_the_same_gres():
    p = place(6, 2, 2, gpus_per_node=4)  # 3 + 3, not 4 + 2: --gres=gpu:3 on each node
    assert p.shard_nodes == (0, 0, 0, 1, 1, 1) and p.gpus_per_node == 3


def test_balancer_of_its_own_moves_the_shards_off_node_0():
    p = place(2, 4, 2, balancer_node="own")
    assert p.shard_nodes == (1, 1) and p.client_nodes == (1,) * 4 and p.shards_on(0) == []


def test_one_node_is_todays_layout():
    p = place(2, 3, 1, gpus_per_node=2)
    assert (p.shard_nodes, p.client_nodes, p.gpus_per_node, p.multi_node) == ((0, 0), (0, 0, 0), 2, False)


def test_shared_clients_use_every_node_of_the_job():
    p = place(1, 4, 3)  # spare nodes carry clients
    assert p.shard_nodes == (0,) and p.client_nodes == (0, 0, 1, 2)


@pytest.mark.parametrize("kwargs, needed", [
    ({"servers": 8, "clients": 1, "nodes": 1, "gpus_per_node": 4}, 2),
    ({"servers": 8, "clients": 1, "nodes": 2, "gpus_per_node": 4, "client_nodes": "own"}, 3),
    ({"servers": 1, "clients": 1, "nodes": 1, "balancer_node": "own"}, 2),
])
def test_too_few_nodes_says_how_many(kwargs, needed):
    with pytest.raises(PlacementError, match=f"needs {needed} nodes"):
        place(**kwargs)


def test_more_shards_per_node_than_gpus_is_refused():
    with pytest.raises(PlacementError, match="5 shards per node"):
        place(5, 1, 1, shards_per_node=5, gpus_per_node=4)


@settings(max_examples=300, deadline=None)
@given(servers=st.integers(1, 64), clients=st.integers(1, 200), extra=st.integers(0, 3),
       asked=st.one_of(st.none(), st.integers(1, 16)), gpus=st.one_of(st.none(), st.integers(1, 16)),
       balancer=st.sampled_from(NODE_ROLES), client_role=st.sampled_from(NODE_ROLES))
def test_placement_properties(servers, clients, extra, asked, gpus, balancer, client_role):
    if asked and gpus and asked > gpus:
        return
    per_node = shard_capacity(servers, asked, gpus)
    nodes = nodes_needed(servers, per_node=per_node, balancer_node=balancer, client_nodes=client_role) + extra
    p = place(servers, clients, nodes, shards_per_node=asked, gpus_per_node=gpus, balancer_node=balancer,
              client_nodes=client_role)
    assert len(p.shard_nodes) == servers and len(p.client_nodes) == clients  # each placed once
    counts = [len(p.shards_on(n)) for n in range(nodes)]
    assert max(counts) == p.gpus_per_node <= per_node  # the gres per node covers every node's shards
    assert not gpus or p.gpus_per_node <= gpus
    shard_nodes = sorted(set(p.shard_nodes))
    assert shard_nodes == list(range(shard_nodes[0], shard_nodes[0] + ceil(servers / per_node)))  # as few as hold them
    assert max(counts) - min(counts[n] for n in shard_nodes) <= 1  # evenly
    assert list(p.shard_nodes) == sorted(p.shard_nodes)  # contiguous ids per node: s<first>.. on each
    assert p.balancer_node == 0 and all(0 <= n < nodes for n in p.client_nodes)
    if balancer == "own":
        assert 0 not in p.shard_nodes and 0 not in p.client_nodes
    if client_role == "own":
        assert not set(p.client_nodes) & set(p.shard_nodes) and 0 not in p.client_nodes
    per_client_node = [len(p.clients_on(n)) for n in sorted(set(p.client_nodes))]
    assert max(per_client_node) - min(per_client_node) <= 1


# --------------------------------------------------------------------- grid checks and job scripts


def _problems(path: Path) -> list[str]:
    with pytest.raises(GridError) as info:
        load_grid(path)
    return info.value.problems


def test_grid_names_the_nodes_it_needs(write_grid):
    profile = {"gpus": {"g4": {"gres": "gpu:{n}", "gpus_per_node": 4}}}
    base = {"name": "mn", "profile": profile, "experiment": {"model": "small_lstm", "servers": [8]}}
    assert load_grid(write_grid({**base, "job": {"nodes": 2}})).job.nodes == 2
    assert _problems(write_grid({**base, "job": {"nodes": 2, "client_nodes": "own"}})) == [
        "job.nodes: 8 shards at 4 per node (GPU type 'g4' has 4 per node) + 1 node for the clients "
        "need 3 nodes (got 2)"]
    assert _problems(write_grid({**base, "job": {"nodes": 4, "shards_per_node": 8}})) == [
        "job.shards_per_node: more shards on one node than GPU type 'g4' has (gpus_per_node: 4) (got 8)"]
    assert _problems(write_grid({**base, "job": {"nodes": 2, "balancer_node": "apart"}})) == [
        "job.balancer_node: one of shared, own (got 'apart')"]
    assert _problems(write_grid({**base, "job": {"nodes": 2, "clients_launcher": "local"}})) == [
        "job.clients_launcher: clients run on their placed nodes with srun when job.nodes > 1; use auto or srun "
        "(got 'local')"]


def _script(grid: Path, out: Path) -> str:
    experiments = generate(load_grid(grid), out)
    text = (out / experiments[0].id / "job.slurm").read_text()
    subprocess.run(["bash", "-n", str(out / experiments[0].id / "job.slurm")], check=True)
    return text


def test_rivanna_multinode_grid_asks_for_3_nodes_and_4_a100_each(tmp_path, monkeypatch):
    monkeypatch.setenv("OSMI_MODELS", str(tmp_path / "models"))
    text = _script(REPO / "experiments" / "rivanna-multinode.yaml", tmp_path / "s")
    sbatch = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --nodes=3" in sbatch and "#SBATCH --gres=gpu:a100:4" in sbatch
    assert "#SBATCH --ntasks-per-node=1" in sbatch and "#SBATCH --ntasks=1" not in sbatch


def test_rivanna_single_node_grid_keeps_one_gpu_per_shard(tmp_path, monkeypatch):
    monkeypatch.setenv("OSMI_MODELS", str(tmp_path / "models"))
    grid = load_grid(REPO / "experiments" / "rivanna.yaml")
    experiments = generate(grid, tmp_path / "s")
    for experiment in experiments[:: max(1, len(experiments) // 20)]:
        text = (tmp_path / "s" / experiment.id / "job.slurm").read_text()
        assert "#SBATCH --nodes=1\n" in text and "#SBATCH --ntasks=1\n" in text
        assert f":{experiment.params['servers']}\n" in text.split("--gres=")[1].split("#SBATCH")[0] + "\n"


def test_gres_is_per_node(write_grid, tmp_path):
    grid = write_grid({"name": "mn", "profile": "localhost",
                       "experiment": {"model": "small_lstm", "servers": [4], "gpu": ["fake"]},
                       "job": {"nodes": 2, "shards_per_node": 2}})
    text = _script(grid, tmp_path / "s")
    assert "#SBATCH --gres=gpu:2\n" in text and "#SBATCH --nodes=2\n" in text


# --------------------------------------------------------------------- node names and launchers


def test_node_addr_and_order():
    shown = "NodeName=osmi-n2 Arch=x86_64 CoresPerSocket=1\n   NodeAddr=10.77.0.12 NodeHostName=osmi-n2 Version=22.05"
    assert node_addr(shown) == "10.77.0.12" and node_addr("NodeName=x") is None
    assert ordered(["n1", "n2", "n3"], "n2") == ["n2", "n1", "n3"]
    assert ordered(["n1", "n2"], None) == ["n1", "n2"]


def test_bind_override_is_for_the_named_node_only():
    assert bind_host("n2", "10.77.0.12", "n2=127.0.0.1") == "127.0.0.1"
    assert bind_host("n1", "10.77.0.11", "n2=127.0.0.1") == "10.77.0.11"
    assert bind_host("n1", "10.77.0.11", None) == "10.77.0.11"
    assert bind_host("n3", "10.77.0.13", "n2=127.0.0.1,n3=127.0.0.3") == "127.0.0.3"


def test_node_launcher_binds_the_node_address_and_stops_its_shards(write_grid, tmp_path, models_dir):
    """osmi.node_shards as srun would run it, here on 127.0.0.2 (another loopback address):
    the shards listen there only, the report names them, SIGTERM leaves none behind."""
    import psutil

    from osmi_ee.ee.expand import expand
    from osmi_ee.ee.generate import generate as gen

    grid = write_grid({"name": "nl", "experiment": {"model": "small_lstm", "servers": [3]},
                       "serve": {"models_dir": str(models_dir), "intra_op_threads": 1}, "job": {"nodes": 1}})
    (experiment,) = gen(load_grid(grid), tmp_path / "s")
    config = tmp_path / "s" / experiment.id / "config.yaml"
    report = tmp_path / "s" / experiment.id / "results" / "nodes" / "n2.json"
    env = {**os.environ, "SLURMD_NODENAME": "n2", "CUDA_VISIBLE_DEVICES": "5,7"}
    launcher = subprocess.Popen([sys.executable, "-m", "osmi_ee.osmi.node_shards", f"--config={config}",
                                 "--first=1", "--count=2", "--host=127.0.0.2", f"--report={report}"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not report.exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        data = json.loads(report.read_text())
        assert data["error"] is None, data
        assert [s["name"] for s in data["shards"]] == ["s1", "s2"]
        assert [s["gpu"] for s in data["shards"]] == ["5", "7"]  # the node's own GPU list, one each
        assert {s["node"] for s in data["shards"]} == {"n2"} and {s["address"] for s in data["shards"]} == {"127.0.0.2"}
        pids = [s["pid"] for s in data["shards"]]
        listening = {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port) for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.pid in pids}
        for s in data["shards"]:
            assert ("127.0.0.2", s["port"]) in listening and ("127.0.0.1", s["port"]) not in listening
    finally:
        launcher.send_signal(signal.SIGTERM)
        out, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, out
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


# --------------------------------------------------------------------- on the 3-node test cluster
# .ci/slurm-up's namespaced cluster: nodes in their own network namespaces (osmi-n1..3, own
# addresses on a bridge), 2 fake GPUs each. Without it these tests skip.


@pytest.fixture(scope="module")
def three_nodes():
    from tests import slurm_cluster

    if not slurm_cluster.slurm_available() and os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("no Slurm here and not root to start one (.ci/slurm-up)")
    env = slurm_cluster.ensure_cluster()
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], env={**os.environ, **env}, capture_output=True,
                           text=True).stdout.split()
    if len(set(nodes)) < 3:
        pytest.skip(f"needs the 3-node test cluster; this one has {sorted(set(nodes))}")
    return env


@pytest.fixture
def on_cluster(three_nodes, monkeypatch, require_haproxy):
    for key, value in three_nodes.items():
        monkeypatch.setenv(key, value)
    return three_nodes


def multinode_grid(models_dir: Path, **measure) -> dict:
    """4 shards, 2 per node on 2 nodes (a fake GPU each), the clients on a third node."""
    return {
        "name": "multinode",
        "profile": "localhost",
        "experiment": {"model": ["small_lstm"], "servers": [4], "clients": [3], "batch": [4], "gpu": ["fake"]},
        "measure": {"warmup_requests": 2, "requests": 60, "stability_tolerance": 0.5, **measure},
        "serve": {"models_dir": str(models_dir), "intra_op_threads": 1},
        "job": {"time": "00:05:00", "nodes": 3, "shards_per_node": 2, "client_nodes": "own"},
    }


def _submit(grid: Path, out: Path):
    from osmi_ee.ee import cli
    from osmi_ee.ee.paths import SweepPaths

    assert cli.main(["generate", "--grid", str(grid), "--out", str(out)]) == 0
    assert cli.main(["submit", "--grid", str(grid), "--out", str(out)]) == 0
    sweep = SweepPaths(out)
    (job_id,) = [v[-1] for v in json.loads(sweep.jobs.read_text()).values()]
    return sweep.experiment(sweep.experiment_ids()[0]), str(job_id)


def _netns_names() -> dict[int, str]:
    """Network namespace inode -> name, for the test cluster's named namespaces (and the host's)."""
    found = {os.stat("/proc/self/ns/net").st_ino: "host"}
    for path in Path("/run/netns").glob("*") if Path("/run/netns").is_dir() else []:
        found[path.stat().st_ino] = path.name
    return found


def job_processes(job_id: str) -> dict[int, tuple[str, str]]:
    """pid -> (network namespace, command) of every process anywhere that belongs to the job
    (SLURM_JOB_ID or SLURM_ARRAY_JOB_ID in its environment), slurmstepd aside."""
    base = job_id.split("_")[0]
    names = _netns_names()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            netns = os.stat(proc / "ns" / "net").st_ino
        except OSError:
            continue
        ids = {e.split(b"=", 1)[1].decode() for e in environ
               if e.startswith((b"SLURM_JOB_ID=", b"SLURM_ARRAY_JOB_ID="))}
        if (base in ids or job_id in ids) and cmdline and not cmdline.startswith("slurmstepd"):
            found[int(proc.name)] = (names.get(netns, f"net:{netns}"), cmdline[:160])
    return found


def test_two_shard_nodes_and_a_client_node(on_cluster, write_grid, tmp_path, models_dir):
    from tests import slurm_cluster

    exp, job_id = _submit(write_grid(multinode_grid(models_dir)), tmp_path / "sweep")
    state = slurm_cluster.wait_for_jobs([job_id], timeout_s=400, env=on_cluster)[job_id]
    summary = json.loads(exp.summary.read_text())
    assert state == "COMPLETED", (state, summary.get("reasons"))
    assert summary["valid"], summary["reasons"]
    env = json.loads(exp.env.read_text())
    placement = env["placement"]
    n1, n2, n3 = placement["node_names"]
    shards = env["shards"]
    assert [(s["name"], s["node"]) for s in shards] == [("s0", n1), ("s1", n1), ("s2", n2), ("s3", n2)]
    assert len({s["address"] for s in shards}) == 2 and "127.0.0.1" not in {s["address"] for s in shards}
    for node in (n1, n2):  # one GPU of its own node per shard
        assert sorted(s["gpu"] for s in shards if s["node"] == node) == ["0", "1"]
    # the 3 streams on the client node, multiplexed in one client process there (osmi.streams)
    assert [(c["node"], c["stream_first"], c["stream_count"]) for c in summary["clients"]] == [(n3, 0, 3)]
    # Every request accounted for at the clients, the balancer and each shard; load on every shard.
    sent = summary["requests"]["sent"]
    assert sent >= 3 * 60 and sent == summary["requests"]["ok"] == sum(c["sent"] for c in summary["clients"])
    accounting = summary["accounting"]
    assert accounting["balancer_forwarded"] == sent
    assert accounting["server_served"] == accounting["balancer_per_backend"]
    shares = {name: b["share"] for name, b in summary["backends"].items()}
    assert sorted(shares) == ["s0", "s1", "s2", "s3"] and min(shares.values()) > 0.125, shares
    print(f"per-shard shares: {shares}; {summary['throughput']}")
    backends = [line.split()[2] for line in (exp.results / "haproxy.cfg").read_text().splitlines()
                if line.strip().startswith("server s")]
    assert backends == [f"{s['address']}:{s['port']}" for s in shards]  # node addresses, not loopback
    assert not job_processes(job_id)  # the normal teardown reached every node


def test_scancel_leaves_no_process_on_any_node(on_cluster, write_grid, tmp_path, models_dir):
    from tests import slurm_cluster

    grid = multinode_grid(models_dir, requests=None, duration_s=120, stability_windows=1)
    exp, job_id = _submit(write_grid(grid), tmp_path / "sweep")
    deadline = time.monotonic() + 300
    while not (exp.results / "barrier" / "go").exists():  # measuring: every part is up
        assert time.monotonic() < deadline, "the run did not reach its measured window"
        assert slurm_cluster.job_state(job_id, env=on_cluster) in ("PENDING", "RUNNING", None)
        time.sleep(0.5)
    before = job_processes(job_id)
    spaces = {space for space, _ in before.values()}
    assert len(spaces) >= 3, before  # shards on two nodes, clients on the third
    print(f"before scancel: {len(before)} processes of job {job_id} in {sorted(spaces)}")
    subprocess.run(["scancel", job_id.split("_")[0]], env={**os.environ, **on_cluster}, check=True)
    state = slurm_cluster.wait_for_jobs([job_id], timeout_s=120, env=on_cluster)[job_id]
    assert state == "CANCELLED", state
    deadline = time.monotonic() + 30
    while (left := job_processes(job_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"left behind after scancel: {left}"


def test_shard_unreachable_from_the_balancer_fails_naming_its_node(on_cluster, write_grid, tmp_path, models_dir,
                                                                  monkeypatch):
    """The shards of every node but the first bind 127.0.0.1 inside its namespace (osmi.node_shards'
    test-only override): up there, unreachable from the balancer's node."""
    from tests import slurm_cluster

    import yaml

    first, second = sorted(set(subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True,
                                              text=True).stdout.split()))[:2]
    monkeypatch.setenv("OSMI_TEST_NODE_BIND", f"{second}=127.0.0.1")
    grid = multinode_grid(models_dir)
    # These two nodes, so the batch step (and the balancer) runs on the first.
    profile = yaml.safe_load((REPO / "slurm" / "profiles" / "localhost.yaml").read_text())
    profile["scheduler"]["extra_sbatch"] = [f"--nodelist={first},{second}"]
    grid["profile"] = profile
    grid["experiment"].update(servers=[2], clients=[1])
    grid["job"].update(nodes=2, shards_per_node=1, client_nodes="shared")
    exp, job_id = _submit(write_grid(grid), tmp_path / "sweep")
    state = slurm_cluster.wait_for_jobs([job_id], timeout_s=300, env=on_cluster)[job_id]
    summary = json.loads(exp.summary.read_text())
    assert state == "FAILED" and not summary["valid"]
    (reason,) = [r for r in summary["reasons"] if "not from the balancer's node" in r]
    named = reason.split(" on node ")[1].split()[0]
    balancer = reason.split("the balancer's node ")[1].split()[0]
    assert (named, balancer) == (second, first), reason
    address = reason.split(" at ")[1].split(": ")[0]
    assert address.rsplit(":", 1)[0] not in ("127.0.0.1", "") and address.rsplit(":", 1)[1].isdigit(), reason
    assert (exp.root / "status").read_text().strip() == "failed"
    assert not job_processes(job_id)
