"""A real multi-process Dask cluster on 127.0.0.1, plain and with TLS.

The scheduler and the workers are separate OS processes started with the
``dask`` command line, as on a cluster; each runs in its own process group,
which the fixtures terminate (then kill) even when a test fails.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from digitbatch import cluster
from digitbatch.cli import main
from digitbatch.scoring.api import score
from digitbatch.training import train

STARTUP_S = 60
# a hang fails the test well before pytest's global timeout
pytestmark = pytest.mark.timeout(180)


def _dask(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    if exe.exists():
        return [str(exe), *args]
    module = {"scheduler": "distributed.cli.dask_scheduler",
              "worker": "distributed.cli.dask_worker"}
    return [sys.executable, "-m", module[args[0]], *args[1:]]


class _Processes:
    """Processes in their own process groups; ``close`` terminates, then kills, each group."""

    def __init__(self, logdir: Path):
        self.logdir, self.procs = logdir, []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "wb")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env, preexec_fn=_die_with_parent)
        log.close()
        self.procs.append(p)
        return p

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-2000:]}"
                         for f in sorted(self.logdir.glob("*.log")))

    def close(self) -> None:
        for p in reversed(self.procs):
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p, signal.SIGKILL)
            p.wait(timeout=10)


def _die_with_parent() -> None:
    """In the child: SIGTERM it when pytest dies, even by SIGKILL (no finalizer runs
    then, and a scheduler with its workers would live on, polling each other)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: close() still ends them when the tests end normally


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _start_cluster(tmp: Path, tls: list[str] | None, n_workers: int = 2):
    """(address, processes) of a scheduler and ``n_workers`` one-thread workers on 127.0.0.1."""
    procs = _Processes(tmp)
    sched_file = tmp / "scheduler.json"
    tls_args = tls or []
    try:
        procs.start("scheduler", _dask(
            "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
            "--dashboard-address", "127.0.0.1:0",  # its HTTP health routes stay up
            "--scheduler-file", str(sched_file), *(["--protocol", "tls"] if tls else []),
            *tls_args))
        deadline = time.monotonic() + STARTUP_S
        while not sched_file.exists():
            if time.monotonic() > deadline or procs.procs[0].poll() is not None:
                raise RuntimeError(f"the scheduler did not start:\n{procs.logs()}")
            time.sleep(0.2)
        for i in range(n_workers):
            procs.start(f"worker-{i}", _dask(
                "worker", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                "--dashboard-address", "127.0.0.1:0", *tls_args))
        address = json.loads(sched_file.read_text())["address"]
        spec = cluster.ClusterSpec(address, *(tls[1::2] if tls else ()))
        with cluster.client(spec) as c:
            c.wait_for_workers(n_workers, timeout=STARTUP_S)
        return address, procs
    except BaseException:
        procs.close()
        raise


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory):
    address, procs = _start_cluster(tmp_path_factory.mktemp("tcp-cluster"), None)
    try:
        yield address
    finally:
        procs.close()


def _write_certs(d: Path, name: str) -> dict[str, Path]:
    """A CA and a certificate + key it signed (for 127.0.0.1), as PEM files in ``d``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])

    def builder(subject, public_key):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - _dt.timedelta(minutes=5))
                .not_valid_after(now + _dt.timedelta(days=1)))

    ca = (builder(ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask")]), key.public_key())
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    pytest.importorskip("cryptography")
    tmp = tmp_path_factory.mktemp("tls-cluster")
    certs = _write_certs(tmp / "certs", "cluster")
    tls = ["--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs["cert"]),
           "--tls-key", str(certs["key"])]
    address, procs = _start_cluster(tmp, tls)
    try:
        yield address, certs, _write_certs(tmp / "rogue", "rogue")
    finally:
        procs.close()


def _pred(out: Path) -> tuple[np.ndarray, np.ndarray]:
    g = zarr.open_group(str(out), mode="r")
    return g["pred"][:], g["margin"][:]


COMPARED_METRICS = ("confusion_matrix", "accuracy", "per_class", "prediction_histogram",
                    "n_images", "n_labeled", "classes", "input")


def test_train_and_score_on_a_real_cluster_match_the_local_cluster(tcp_cluster, small_store,
                                                                    tmp_path):
    assert tcp_cluster.startswith("tcp://127.0.0.1:")
    runs = {}
    for name, sched in (("remote", tcp_cluster), ("local", "local")):
        tr = train(small_store, tmp_path / f"model-{name}", cv=3, scheduler=sched)
        sc = score(small_store, model=tmp_path / f"model-{name}",
                   out=tmp_path / f"pred-{name}.zarr", scheduler=sched)
        runs[name] = tr, sc
    (tr_r, sc_r), (tr_l, sc_l) = runs["remote"], runs["local"]
    assert tr_r.cv["backend"] == tr_l.cv["backend"] == "dask"
    assert tr_r.cv["scores"] == tr_l.cv["scores"]
    assert tr_r.test == tr_l.test
    assert (tmp_path / "model-remote" / "model.npz").read_bytes() == \
        (tmp_path / "model-local" / "model.npz").read_bytes()
    for key in COMPARED_METRICS:
        assert sc_r.metrics[key] == sc_l.metrics[key], key
    for a, b in zip(_pred(tmp_path / "pred-remote.zarr"), _pred(tmp_path / "pred-local.zarr")):
        np.testing.assert_array_equal(a, b)


def test_a_job_runs_on_the_real_cluster_through_the_cli(tcp_cluster, small_store, tmp_path):
    spec = tmp_path / "job.toml"
    spec.write_text(f'[job]\nname = "on-cluster"\nworkdir = "{tmp_path / "work"}"\n'
                    f'[train]\nstore = "{small_store}"\ncv = 3\n[score]\n')
    result = CliRunner().invoke(main, ["run", str(spec), "--scheduler", tcp_cluster])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "work" / "on-cluster.run.json").read_text())
    assert summary["outcome"] == "succeeded"
    assert summary["cluster"] == {"scheduler": tcp_cluster, "tls": False}
    assert [s["name"] for s in summary["steps"]] == ["train", "score"]
    assert summary["steps"][0]["result"]["cv"]["k"] == 3


# This test used to hang now and then inside the full suite: the Clients of
# the refused connections were closed by a later garbage collection inside a
# new Client's loop-thread start, a deadlock (fixed in cluster.client).
def test_tls_cluster_scores_through_the_tls_options_and_refuses_others(tls_cluster, small_store,
                                                                       tmp_path):
    address, certs, rogue = tls_cluster
    assert address.startswith("tls://127.0.0.1:")
    train(small_store, tmp_path / "model")
    ref = score(small_store, model=tmp_path / "model", out=tmp_path / "ref.zarr",
                scheduler="synchronous")
    result = CliRunner().invoke(main, [
        "score", str(small_store), "--model", str(tmp_path / "model"),
        "--out", str(tmp_path / "tls.zarr"), "--json", "--scheduler", address,
        "--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs["cert"]),
        "--tls-key", str(certs["key"])])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["confusion_matrix"] == ref.metrics["confusion_matrix"]
    for a, b in zip(_pred(tmp_path / "tls.zarr"), _pred(tmp_path / "ref.zarr")):
        np.testing.assert_array_equal(a, b)

    # no options: Dask's own TLS config is honoured
    import dask

    with dask.config.set({"distributed.comm.tls.ca-file": str(certs["ca"]),
                          "distributed.comm.tls.client.cert": str(certs["cert"]),
                          "distributed.comm.tls.client.key": str(certs["key"])}):
        with cluster.client(address) as c:
            assert c.submit(sum, [1, 2]).result(timeout=30) == 3

    refused = {
        # no certificates at all (and none in Dask's config)
        "no certificate": cluster.ClusterSpec(address, timeout="5s"),
        # a certificate the cluster's CA did not sign: the scheduler refuses it
        "foreign certificate": cluster.ClusterSpec(
            address, tls_ca_file=str(certs["ca"]), tls_cert=str(rogue["cert"]),
            tls_key=str(rogue["key"]), timeout="5s"),
        # plain TCP to the TLS port
        "plain tcp": cluster.ClusterSpec(address.replace("tls://", "tcp://"), timeout="3s"),
    }
    for case, spec in refused.items():
        t0 = time.monotonic()
        with pytest.raises(cluster.ClusterError, match="could not connect"):
            with cluster.client(spec):
                pass
        assert time.monotonic() - t0 < 20, case

    # the same refusal, as the command line reports it
    result = CliRunner().invoke(main, ["score", str(small_store), "--model",
                                       str(tmp_path / "model"), "--out", str(tmp_path / "x.zarr"),
                                       "--scheduler", address])
    assert result.exit_code == 1
    assert "ClusterError" in result.output and "--tls-ca-file" in result.output


def test_local_cluster_listens_on_loopback_only():
    psutil = pytest.importorskip("psutil")
    with cluster.client("local", n_workers=2) as c:
        assert c.cluster.scheduler.address.startswith("tcp://127.0.0.1:")
        workers = c.scheduler_info()["workers"]
        assert len(workers) == 2
        assert all(a.startswith("tcp://127.0.0.1:") for a in workers)
        assert "127.0.0.1" in c.dashboard_link
        me = psutil.Process()
        exposed = []
        # the LocalCluster's processes share our process group (the fixtures' do not)
        ours = [p for p in me.children(recursive=True) if _pgid(p.pid) == os.getpgid(0)]
        assert len(ours) >= 2, ours
        for proc in [me, *ours]:
            try:
                conns = proc.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            exposed += [(proc.pid, s.laddr) for s in conns if s.status == psutil.CONN_LISTEN
                        and s.laddr.ip not in ("127.0.0.1", "::1")]
        assert not exposed, f"listening beyond loopback: {exposed}"


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_tls_options_need_a_tls_scheduler(tmp_path):
    pem = tmp_path / "x.pem"
    pem.write_text("not used")
    spec = cluster.from_options("local", tls_ca_file=str(pem), tls_cert=str(pem))
    with pytest.raises(cluster.ClusterError, match="tls://"):
        cluster.resolve_scheduler(spec)
    with pytest.raises(cluster.ClusterError, match="--tls-cert"):
        cluster.ClusterSpec("tls://127.0.0.1:1", tls_ca_file=str(pem)).security()
    assert cluster.from_options("tcp://h:1") == "tcp://h:1"  # no TLS: the plain string
    # the command line refuses them before any work
    result = CliRunner().invoke(main, ["score", str(tmp_path / "s.zarr"), "--model", str(pem),
                                       "--out", str(tmp_path / "p.zarr"), "--tls-cert", str(pem)])
    assert result.exit_code == 1 and "ClusterError" in result.output, result.output
    assert not (tmp_path / "p.zarr").exists()


def test_scheduler_address_falls_back_to_dask_config(monkeypatch):
    import dask

    monkeypatch.delenv(cluster.SCHEDULER_ENV, raising=False)
    assert cluster.resolve_scheduler(None) == "local"
    with dask.config.set({"scheduler-address": "tcp://10.1.2.3:8786"}):
        assert cluster.resolve_scheduler(None) == "tcp://10.1.2.3:8786"
        monkeypatch.setenv(cluster.SCHEDULER_ENV, "synchronous")
        assert cluster.resolve_scheduler(None) == "synchronous"  # the env var first
        assert cluster.resolve_scheduler("tcp://h:1") == "tcp://h:1"  # the option before both


def test_local_cluster_workers_keep_glibcs_adaptive_allocator(monkeypatch):
    """No MALLOC_TRIM_THRESHOLD_ in the workers (it cost 12% of a scoring task),
    even after an earlier Nanny copied Dask's value into this process's env."""
    import dask
    import distributed  # noqa: F401  (its import loads its default config)

    value = dask.config.get("distributed.nanny.pre-spawn-environ").get("MALLOC_TRIM_THRESHOLD_")
    if value is not None:
        monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", str(value))
    with cluster.client("local", n_workers=1) as c:
        envs = c.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                              os.environ.get("OPENBLAS_NUM_THREADS")))
    assert list(envs.values()) == [(None, "1")]


@pytest.mark.parametrize("processes", [True, False])
def test_local_cluster_workers_run_without_the_statistical_profiler(processes):
    """The worker profiler samples task stacks every 10 ms (about 6% of a core
    per worker during a CV fold fit); our LocalClusters turn it off, in
    worker processes (and after a restart) and in worker threads."""
    def periodic(dask_worker):
        return sorted(dask_worker.periodic_callbacks)

    with cluster.client("local", n_workers=1, processes=processes) as c:
        first = list(c.run(periodic).values())
        if processes:
            c.restart()
            first += list(c.run(periodic).values())
    assert first and all("heartbeat" in p and "profile" not in p for p in first)
