"""The Slurm SPANK plugin against a real single-node Slurm (tests/integration/slurm.py):
slurmctld, slurmd and the jobs' slurmstepd load build/spank_jobgate.so from the test
cluster's plugstack.conf; jobs run as a test user."""
import os
import re
import pytest

from conftest import wait_for
from slurm import cluster_user, slurm_cluster  # noqa: F401

USER = "jgslurm1"

ENV_SCRIPT = ("--wrap", "env | grep ^JOBGATE_ | sort; "
              "[ -n \"$JOBGATE_DIR\" ] && stat -c 'dir %u %a %F' \"$JOBGATE_DIR\"; true")


PLUGIN_ENV = ("JOBGATE_DIR", "JOBGATE_GATEWAY", "JOBGATE_JOB_ID")


def job_env(text):
    """What the plugin exported, from a job's `env` (the tests' own JOBGATE_* pass through
    sbatch too)."""
    return {k: v for k, v in re.findall(r"^(JOBGATE_\w+)=(.*)$", text, re.M) if k in PLUGIN_ENV}


def test_a_jobgate_job_gets_its_own_directory_and_environment(slurm_cluster):
    c = slurm_cluster
    uid, _ = cluster_user(USER)
    job = c.sbatch(USER, "--jobgate", *ENV_SCRIPT)
    assert c.wait_job(job) == "COMPLETED", c.logs()
    out = c.output(job)
    env = job_env(out)
    assert env.get("JOBGATE_JOB_ID") == str(job), out
    assert env.get("JOBGATE_GATEWAY") == "https://gateway.test:8443", out
    assert env.get("JOBGATE_DIR") == f"{c.jobs_dir}/{job}", out
    # The job's user alone may enter it.
    assert f"dir {uid} 700 directory" in out, out
    # The job's epilog removes it.
    wait_for(lambda: not os.path.exists(f"{c.jobs_dir}/{job}"), 10,
             what="the job directory to go with the job")
    st = os.stat(c.jobs_dir)
    assert st.st_uid == 0 and not st.st_mode & 0o022


def test_a_job_without_jobgate_gets_nothing(slurm_cluster):
    c = slurm_cluster
    job = c.sbatch(USER, *ENV_SCRIPT)
    assert c.wait_job(job) == "COMPLETED", c.logs()
    assert job_env(c.output(job)) == {}
    assert not os.path.exists(f"{c.jobs_dir}/{job}")


def test_the_steps_of_one_job_share_its_directory(slurm_cluster):
    """srun steps inside a --jobgate batch job find the directory the batch step made."""
    c = slurm_cluster
    job = c.sbatch(USER, "--jobgate", "--wrap",
                   "echo batch=$JOBGATE_DIR; srun -n1 sh -c 'echo step=$JOBGATE_DIR'")
    assert c.wait_job(job) == "COMPLETED", c.output(job) + c.logs()
    out = c.output(job)
    assert f"batch={c.jobs_dir}/{job}" in out and f"step={c.jobs_dir}/{job}" in out, out


@pytest.mark.parametrize("cmd", ["srun", "salloc"])
def test_srun_and_salloc_know_jobgate_too(slurm_cluster, cmd):
    """--jobgate on an interactive allocation (salloc, then a step in it) and on a bare srun."""
    c = slurm_cluster
    show = ["sh", "-c", "echo dir=$JOBGATE_DIR id=$JOBGATE_JOB_ID"]
    args = [cmd, "--jobgate"] + (["srun"] if cmd == "salloc" else []) + show
    p = c.run(*args, user=USER, timeout=60)
    m = re.search(r"^dir=(\S+) id=(\d+)$", p.stdout, re.M)
    assert m, p.stdout + p.stderr
    assert m.group(1) == f"{c.jobs_dir}/{m.group(2)}"
    wait_for(lambda: not os.path.exists(m.group(1)), 10, what="the job directory to go")
    # Without the option, nothing.
    p = c.run(*[a for a in args if a != "--jobgate"], user=USER, timeout=60)
    assert re.search(r"^dir= id=$", p.stdout, re.M), p.stdout + p.stderr


def test_a_bad_plugin_argument_is_named_and_fails_jobs_only_when_required(slurm_cluster):
    c = slurm_cluster
    c.wait_idle()
    try:
        # required: sbatch (which loads the plugin too) refuses, naming the argument.
        c.write_plugstack("gateway=https://gateway.test:8443 bogus=1", required=True)
        p = c.run("sbatch", "--parsable", "--jobgate", *ENV_SCRIPT, user=USER, check=False)
        assert p.returncode != 0, p.stdout
        assert 'unknown argument "bogus"' in p.stderr, p.stderr
        # optional: the job runs, without jobgate, and slurmd's log names the argument.
        c.write_plugstack("gateway=https://gateway.test:8443 bogus=1", required=False)
        job = c.sbatch(USER, "--jobgate", *ENV_SCRIPT)
        assert c.wait_job(job) == "COMPLETED", c.logs()
        assert job_env(c.output(job)) == {}
        wait_for(lambda: 'unknown argument "bogus"' in c.slurmd_log.read_text(errors="replace"),
                 10, what="slurmd's log to name the bad argument")
        c.wait_idle()
    finally:
        c.write_plugstack("gateway=https://gateway.test:8443")
