"""tpu_scripts/: every script under --dry-run prints exactly the commands it would run.

The scripts are bash; these tests run them as subprocesses. A fake `gcloud` first on PATH records
every call, so the tests prove that --dry-run never calls gcloud, and (in the execution tests) run
the scripts for real against a fake TPU VM: ssh commands run locally in a temporary home, which
checks that the quoting of the remote commands survives two shells and that job exit statuses
come back. Nothing here needs gcloud, network access or a TPU.
"""
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / 'tpu_scripts'
ALL_SCRIPTS = sorted(SCRIPTS.glob('*.sh'))
USER_SCRIPTS = ['create.sh', 'setup.sh', 'train.sh', 'eval.sh', 'export.sh', 'logs.sh',
                'delete.sh', 'run.sh']

FAKE_GCLOUD = textwrap.dedent('''\
    #!{python}
    """Fake gcloud: records its argv; runs `tpu-vm ssh --command` locally in FAKE_TPU_HOME."""
    import json, os, shutil, subprocess, sys
    with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:
        f.write(json.dumps(sys.argv[1:]) + '\\n')
    home = os.environ.get('FAKE_TPU_HOME')
    if not home:
        sys.exit(97)  # a dry run must never get here
    args = sys.argv[1:]
    if args[:4] == ['compute', 'tpus', 'tpu-vm', 'ssh']:
        command = [a for a in args if a.startswith('--command=')][0][len('--command='):]
        sys.exit(subprocess.call(['bash', '-c', command], cwd=home))
    if args[:4] == ['compute', 'tpus', 'tpu-vm', 'scp']:
        shutil.copy(args[4], os.path.join(home, args[5].split(':', 1)[1]))
    sys.exit(0)
''')


@pytest.fixture
def sandbox(tmp_path):
    """Environment with a recording fake gcloud first on PATH and no HALONET_* presets."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    gcloud = bin_dir / 'gcloud'
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith('HALONET_')}
    env.pop('FAKE_TPU_HOME', None)
    env['PATH'] = f'{bin_dir}{os.pathsep}{env["PATH"]}'
    env['TMPDIR'] = str(tmp_path)
    env['FAKE_GCLOUD_LOG'] = str(tmp_path / 'gcloud_calls.jsonl')

    class Sandbox:
        path = tmp_path

        def run(self, script, *args, extra_env=None, check_rc=0):
            proc = subprocess.run(['bash', str(SCRIPTS / script), *args], capture_output=True,
                                  text=True, env={**env, **(extra_env or {})}, timeout=60)
            if check_rc is not None:
                assert proc.returncode == check_rc, (proc.stdout, proc.stderr)
            return proc

        def dry(self, script, *args, extra_env=None):
            proc = self.run(script, '--dry-run', *args, extra_env=extra_env)
            assert self.gcloud_calls() == [], 'a dry run called gcloud'
            return proc.stdout.splitlines()

        def gcloud_calls(self):
            log = Path(env['FAKE_GCLOUD_LOG'])
            if not log.exists():
                return []
            return [json.loads(line) for line in log.read_text().splitlines()]

    return Sandbox()


def remote_command(line):
    """The shell command a printed `gcloud ... ssh ... --command=CMD` line runs on the hosts."""
    argv = shlex.split(line)
    assert argv[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']
    commands = [a for a in argv if a.startswith('--command=')]
    assert len(commands) == 1
    return commands[0][len('--command='):]


SINGLE = ['--name', 'h0-v3', '--zone', 'europe-west4-a', '--accelerator-type', 'v3-8']
POD = ['--name', 'h7-pod', '--zone', 'europe-west4-a', '--accelerator-type', 'v3-128']
MAIN = ['--gin_file', 'gin/h0.gin', '--model_dir', 'gs://my-bucket/h0']


# ----------------------------------------------------------------------------------- static checks

def test_every_script_is_present_and_executable():
    names = {p.name for p in ALL_SCRIPTS}
    assert set(USER_SCRIPTS) | {'common.sh', 'host_job.sh', 'host_setup.sh'} <= names
    for name in USER_SCRIPTS + ['host_job.sh', 'host_setup.sh']:
        assert os.access(SCRIPTS / name, os.X_OK), name


@pytest.mark.parametrize('script', ALL_SCRIPTS, ids=lambda p: p.name)
def test_bash_n(script):
    proc = subprocess.run(['bash', '-n', str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_shellcheck():
    if shutil.which('shellcheck') is None:
        pytest.skip('shellcheck is not installed (Debian: apt-get install -y shellcheck)')
    proc = subprocess.run(['shellcheck', '-x', '-P', 'SCRIPTDIR', *[p.name for p in ALL_SCRIPTS]],
                          cwd=SCRIPTS, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize('script', USER_SCRIPTS + ['host_job.sh', 'host_setup.sh'])
def test_help_says_what_the_script_does(script, sandbox):
    proc = sandbox.run(script, '--help')
    assert proc.stdout.startswith('Usage: ')
    assert len(proc.stdout.splitlines()) > 8
    if script in USER_SCRIPTS:
        assert '--dry-run' in proc.stdout and '--zone' in proc.stdout
    assert sandbox.gcloud_calls() == []


# ------------------------------------------------------------------------------------------ create

def test_create_single_host(sandbox):
    assert sandbox.dry('create.sh', *SINGLE) == [
        'gcloud compute tpus tpu-vm create h0-v3 --zone=europe-west4-a --accelerator-type=v3-8 '
        '--version=tpu-ubuntu2204-base']


def test_create_pod_spot_with_project_and_equals_syntax(sandbox):
    assert sandbox.dry('create.sh', '--name=h7-pod', '--zone=us-central2-b', '--project=my-proj',
                       '--accelerator-type=v4-128', '--spot') == [
        'gcloud compute tpus tpu-vm create h7-pod --zone=us-central2-b --project=my-proj '
        '--accelerator-type=v4-128 --version=tpu-ubuntu2204-base --spot']


@pytest.mark.parametrize('accel, runtime', [
    ('v2-8', 'tpu-ubuntu2204-base'), ('v4-8', 'tpu-ubuntu2204-base'),
    ('v5litepod-16', 'v2-alpha-tpuv5-lite'), ('v5p-32', 'v2-alpha-tpuv5'),
    ('v6e-8', 'v2-alpha-tpuv6e')])
def test_create_default_runtime_per_family(sandbox, accel, runtime):
    line, = sandbox.dry('create.sh', '--name', 'x', '--zone', 'us-east5-b',
                        '--accelerator-type', accel, '--preemptible')
    assert shlex.split(line)[-3:] == [f'--accelerator-type={accel}', f'--version={runtime}',
                                      '--preemptible']


def test_create_runtime_version_override(sandbox):
    line, = sandbox.dry('create.sh', *POD, '--runtime-version', 'tpu-vm-tf-2.16.1-pod-pjrt')
    assert line.endswith('--accelerator-type=v3-128 --version=tpu-vm-tf-2.16.1-pod-pjrt')


# ------------------------------------------------------------------------------- refused arguments

@pytest.mark.parametrize('script, args, message', [
    ('create.sh', ['--name', 'a', '--zone', 'europe-west4-a', '--accelerator-type', 'v9-8'],
     "unknown accelerator type 'v9-8'"),
    ('create.sh', ['--name', 'a', '--zone', 'europe-west4-a', '--accelerator-type', 'v3-16'],
     "unknown accelerator type 'v3-16'"),
    ('create.sh', ['--name', 'a', '--zone', 'europe-west4-a', '--accelerator-type', 'v5litepod-2'],
     "unknown accelerator type 'v5litepod-2'"),
    ('create.sh', ['--name', 'a', '--zone', 'europe-west4-a', '--accelerator-type', 'v4-12'],
     "unknown accelerator type 'v4-12'"),
    ('create.sh', ['--name', 'a', '--zone', 'europe-west4-a', '--accelerator-type', 'tpu'],
     "unknown accelerator type 'tpu'"),
    ('create.sh', ['--name', 'a', '--zone', 'europe-west4-a'], '--accelerator-type is required'),
    ('create.sh', ['--name', 'a', '--accelerator-type', 'v3-8'], '--zone is required'),
    ('create.sh', ['--name', 'a', '--zone', 'europe', '--accelerator-type', 'v3-8'],
     "--zone 'europe' is not a zone name"),
    ('create.sh', ['--zone', 'europe-west4-a', '--accelerator-type', 'v3-8'], '--name is required'),
    ('create.sh', ['--name', 'Bad_Name', '--zone', 'europe-west4-a', '--accelerator-type', 'v3-8'],
     "--name 'Bad_Name' is not a valid TPU name"),
    ('create.sh', [*SINGLE, '--spot', '--preemptible'], '--spot and --preemptible exclude each other'),
    ('create.sh', [*SINGLE, '--bogus'], 'unknown flag: --bogus'),
    ('create.sh', [*SINGLE, '--zone'], '--zone needs a value'),
    ('setup.sh', [*SINGLE[:4]], '--accelerator-type is required'),
    ('setup.sh', [*SINGLE, '--ref', 'no-such-revision'], "--ref 'no-such-revision' is not a commit"),
    ('train.sh', [*SINGLE, '--model_dir', 'gs://my-bucket/h0'], '--gin_file is required'),
    ('train.sh', [*SINGLE, '--gin_file', 'gin/h0.gin'], '--model_dir is required'),
    ('train.sh', [*SINGLE, '--gin_file', 'gin/h0.gin', '--model_dir', '/tmp/h0'],
     "--model_dir '/tmp/h0' must be gs://"),
    ('train.sh', [*SINGLE, '--gin_file', '/abs/h0.gin', '--model_dir', 'gs://my-bucket/h0'],
     'relative to the project root'),
    ('train.sh', [*SINGLE, *MAIN, '--mode', 'eval'], '--mode must be train or train_and_eval'),
    ('train.sh', [*SINGLE, *MAIN, '--env', 'novalue'], '--env needs KEY=VALUE'),
    ('train.sh', ['--name', 'a', '--accelerator-type', 'v3-8', *MAIN], '--zone is required'),
    ('eval.sh', ['--name', 'a', '--zone', 'europe-west4-a', '--accelerator-type', 'v7-8', *MAIN],
     "unknown accelerator type 'v7-8'"),
    ('export.sh', ['--name', 'a', '--accelerator-type', 'v3-8', *MAIN], '--zone is required'),
    ('logs.sh', [*POD, '--worker', '16'], "--worker must be 'all' or a host index below 16"),
    ('logs.sh', [*SINGLE, '--lines', 'many'], '--lines needs a number'),
    ('delete.sh', ['--name', 'a'], '--zone is required'),
    ('delete.sh', ['--name', 'a', '--zone', 'europe-west4-a', '--accelerator-type', 'v3-7'],
     "unknown accelerator type 'v3-7'"),
    ('run.sh', [*SINGLE[:4], '--accelerator-type', 'v5e-8', *MAIN], "unknown accelerator type 'v5e-8'"),
    ('run.sh', ['--name', 'a', '--accelerator-type', 'v3-8', *MAIN], '--zone is required'),
    ('run.sh', [*SINGLE, '--gin_file', 'gin/h0.gin'], '--model_dir is required'),
])
def test_bad_arguments_are_refused_with_a_message(sandbox, script, args, message):
    for dry in ([], ['--dry-run']):
        proc = sandbox.run(script, *dry, *args, check_rc=2)
        assert message in proc.stderr
        assert f"Run '{script} --help' for usage." in proc.stderr
        assert proc.stdout == ''
    assert sandbox.gcloud_calls() == []


@pytest.mark.parametrize('generation, expected', [([], 'v4-512'),
                                                  (['--generation', 'v5litepod'], 'v5litepod-256')])
def test_a_published_gin_file_gives_its_slice_as_the_default_type(sandbox, generation, expected):
    """Without --accelerator-type, the slice official_halonet/tpu/slices.py publishes the gin file
    for, on --generation (default v4); an unpublished file still needs the flag."""
    lines = sandbox.dry('run.sh', '--name', 'h7-pod', '--zone', 'europe-west4-a', *generation,
                        '--gin_file', 'gin/h7.gin', '--model_dir', 'gs://my-bucket/h7')
    creates = [line for line in lines if ' tpu-vm create ' in line]
    assert len(creates) == 1 and f'--accelerator-type={expected}' in shlex.split(creates[0])
    proc = sandbox.run('train.sh', '--dry-run', '--name', 'a', '--zone', 'europe-west4-a',
                       '--gin_file', 'gin/demo.gin', '--model_dir', 'gs://b/d', check_rc=2)
    assert '--accelerator-type is required' in proc.stderr
    proc = sandbox.run('train.sh', '--dry-run', *SINGLE[:4], '--generation', 'v3', *MAIN,
                       check_rc=2)
    assert '--generation must be v4 or v5litepod' in proc.stderr


# -------------------------------------------------------------------------------- pods and workers

@pytest.mark.parametrize('accel, hosts', [
    ('v2-8', 1), ('v2-32', 4), ('v3-8', 1), ('v3-32', 4), ('v3-2048', 256), ('v4-8', 1),
    ('v4-16', 2), ('v4-4096', 512), ('v5p-8', 1), ('v5p-128', 16), ('v5litepod-1', 1),
    ('v5litepod-8', 1), ('v5litepod-16', 4), ('v5litepod-256', 64), ('v6e-4', 1), ('v6e-8', 1),
    ('v6e-16', 4), ('v6e-256', 64)])
def test_host_count_and_worker_all_for_pods(sandbox, accel, hosts):
    proc = subprocess.run(['bash', '-c', f'source {SCRIPTS}/common.sh && accelerator_hosts {accel}'],
                          capture_output=True, text=True, check=True)
    assert int(proc.stdout) == hosts
    lines = sandbox.dry('eval.sh', '--name', 'n', '--zone', 'us-central2-b', '--accelerator-type',
                        accel, *MAIN)
    start = shlex.split(lines[0])
    assert ('--worker=all' in start) == (hosts > 1)
    assert not any(a.startswith('--worker') for a in start) or hosts > 1


# ------------------------------------------------------------------------------------------- setup

def test_setup_single_host(sandbox):
    assert sandbox.dry('setup.sh', *SINGLE) == [
        f'git -C {ROOT} archive --format=tar.gz --output={sandbox.path}/halonet-src-h0-v3.tar.gz HEAD',
        f'gcloud compute tpus tpu-vm scp {sandbox.path}/halonet-src-h0-v3.tar.gz '
        'h0-v3:halonet-src.tar.gz --zone=europe-west4-a',
        "gcloud compute tpus tpu-vm ssh h0-v3 --zone=europe-west4-a '--command=mkdir -p halonet && "
        'rm -rf halonet/src && mkdir halonet/src && tar -xzf halonet-src.tar.gz -C halonet/src && '
        "rm halonet-src.tar.gz && bash halonet/src/tpu_scripts/host_setup.sh'"]


def test_setup_pod_uses_worker_all_and_passes_install_flags(sandbox):
    lines = sandbox.dry('setup.sh', *POD, '--project', 'p1', '--remote-dir', 'work/h7',
                        '--python=python3.12', '--ref', 'HEAD~0')
    assert len(lines) == 3
    assert shlex.split(lines[0])[-1] == 'HEAD~0'
    assert shlex.split(lines[1]) == [
        'gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', f'{sandbox.path}/halonet-src-h7-pod.tar.gz',
        'h7-pod:work-h7-src.tar.gz', '--zone=europe-west4-a', '--project=p1', '--worker=all']
    assert shlex.split(lines[2])[:8] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'h7-pod',
                                         '--zone=europe-west4-a', '--project=p1']
    assert '--worker=all' in shlex.split(lines[2])
    assert remote_command(lines[2]).endswith(
        'bash work/h7/src/tpu_scripts/host_setup.sh --python python3.12')


@pytest.fixture
def host_base(tmp_path):
    """A host's install base: BASE/src holds the project copy's requirements.txt."""
    base = tmp_path / 'halonet'
    (base / 'src').mkdir(parents=True)
    shutil.copy(ROOT / 'requirements.txt', base / 'src' / 'requirements.txt')
    return base


def test_host_setup_installs_exactly_the_pinned_set(sandbox, host_base):
    """requirements.txt pins libtpu and jax / jaxlib: nothing else installs TPU software, and the
    tpu_software check fails the setup where what was installed is not the pin."""
    b = str(host_base)
    assert sandbox.dry('host_setup.sh', '--base', b) == [
        'sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q',
        'sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q '
        'python3.11 python3.11-venv',
        f'python3.11 -m venv {b}/venv',
        f'{b}/venv/bin/python3 -m pip install -q -r {b}/src/requirements.txt '
        f'-c {b}/src/constraints.txt',
        f'{b}/venv/bin/python3 -m pip install -q --no-deps --force-reinstall tensorflow-tpu==2.20.0',
        f'{b}/venv/bin/python3 -m pip check',
        f'env PYTHONPATH={b}/src {b}/venv/bin/python3 -m official_halonet.kernels.tpu_software']
    requirements = (ROOT / 'requirements.txt').read_text().splitlines()
    assert {'libtpu==0.0.14', 'jax==0.6.0', 'jaxlib==0.6.0'} <= set(requirements)
    other = sandbox.dry('host_setup.sh', '--base', b, '--python', 'python3.12')
    assert other[1].endswith('python3.12 python3.12-venv')
    assert other[2] == f'python3.12 -m venv {b}/venv'


def test_host_setup_takes_the_tensorflow_tpu_version_from_requirements(sandbox, host_base):
    """tensorflow-tpu replaces the CPU tensorflow's files, so it is the version of that pin."""
    pin, = [line for line in (ROOT / 'requirements.txt').read_text().splitlines()
            if line.startswith('tensorflow==')]
    tf_tpu = f'tensorflow-tpu=={pin.split("==")[1]}'
    assert sandbox.dry('host_setup.sh', '--base', str(host_base))[4].endswith(tf_tpu)
    (host_base / 'src' / 'requirements.txt').write_text(
        'tensorflow-text==2.20.1\ntensorflow==2.19.1  # comment\nlibtpu==0.0.14\n')
    assert sandbox.dry('host_setup.sh', '--base', str(host_base))[4].endswith(
        '--no-deps --force-reinstall tensorflow-tpu==2.19.1')
    (host_base / 'src' / 'requirements.txt').write_text('tensorflow>=2.19\n')
    proc = sandbox.run('host_setup.sh', '--dry-run', '--base', str(host_base), check_rc=2)
    assert proc.stdout == ''
    assert proc.stderr.splitlines()[0] == (
        f"host_setup.sh: error: {host_base}/src/requirements.txt pins no tensorflow==X.Y.Z "
        "(found '')")
    proc = sandbox.run('host_setup.sh', '--dry-run', '--base', str(host_base / 'none'), check_rc=2)
    assert proc.stdout == '' and 'no ' + str(host_base / 'none/src/requirements.txt') in proc.stderr


def test_host_setup_version_check_runs_from_any_directory(sandbox, tmp_path):
    """The printed check finds the project copy's module and pins, not the caller's directory."""
    base = tmp_path / 'halonet'
    (base / 'venv' / 'bin').mkdir(parents=True)
    (base / 'src').symlink_to(ROOT)
    python = base / 'venv' / 'bin' / 'python3'
    python.write_text(f'#!/usr/bin/env bash\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    check = shlex.split(sandbox.dry('host_setup.sh', '--base', str(base))[-1])
    proc = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    pins = dict(line.split('==') for line in (ROOT / 'requirements.txt').read_text().splitlines()
                if line.split('==')[0] in ('libtpu', 'jax', 'jaxlib'))
    ok = [p for p in ('libtpu', 'jax', 'jaxlib') if metadata.version(p) == pins[p]]
    assert proc.stdout.splitlines() == [f'{p} {pins[p]} (pinned)' for p in ok]
    assert proc.returncode == (0 if len(ok) == 3 else 1), proc.stderr
    assert len(proc.stderr.splitlines()) == 3 - len(ok)


@pytest.mark.parametrize('script, args', [
    ('host_setup.sh', []), ('setup.sh', SINGLE), ('run.sh', [*SINGLE, *MAIN])])
@pytest.mark.parametrize('flag', [
    ['--libtpu-version', '0.0.21'], ['--libtpu-version=0.0.21'], ['--tf-tpu-version', '2.19.1'],
    ['--tf-tpu-index', 'https://example.com/index.html'], ['--tpu-env']], ids=' '.join)
def test_retired_install_flags_are_refused(sandbox, script, args, flag):
    """The pinned set is the only install: a flag that installed something else is an error."""
    for dry in ([], ['--dry-run']):
        proc = sandbox.run(script, *dry, *args, *flag, check_rc=2)
        assert proc.stderr.splitlines() == [f'{script}: error: unknown flag: {flag[0]}',
                                             f"Run '{script} --help' for usage."]
        assert proc.stdout == ''
    assert sandbox.gcloud_calls() == []
    assert flag[0].split('=')[0] not in sandbox.run(script, '--help').stdout


# ------------------------------------------------------------------------------ train / eval / export

def test_train_single_host(sandbox):
    assert sandbox.dry('train.sh', *SINGLE, *MAIN) == [
        "gcloud compute tpus tpu-vm ssh h0-v3 --zone=europe-west4-a '--command=cd halonet/src && "
        'bash tpu_scripts/host_job.sh start train -- ../venv/bin/python3 main.py '
        "--gin_file=gin/h0.gin --mode=train_and_eval --model_dir=gs://my-bucket/h0 --tpu=local'",
        "gcloud compute tpus tpu-vm ssh h0-v3 --zone=europe-west4-a '--command=cd halonet/src && "
        "bash tpu_scripts/host_job.sh wait train'"]


def test_train_pod_runs_on_every_host_and_passes_gin_flags_through(sandbox):
    binding = "Trainer.name = 'h7 run'"
    lines = sandbox.dry('train.sh', *POD, '--gin_file', 'gin/h7.gin', '--gin_file=gin/extra.gin',
                        '--gin_bindings', binding, '--gin_params=a.b = 3',
                        '--model_dir=gs://my-bucket/runs/h7', '--env', 'TPU_STDERR_LOG_LEVEL=0',
                        '--mode', 'train', '--', '--experiment=x y')
    assert len(lines) == 3
    start, wait0, wait_all = (shlex.split(line) for line in lines)
    for argv, worker in ((start, 'all'), (wait0, '0'), (wait_all, 'all')):
        assert argv[:7] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'h7-pod',
                            '--zone=europe-west4-a']
        assert f'--worker={worker}' in argv
    remote = shlex.split(remote_command(lines[0]))
    assert remote == [
        'cd', 'halonet/src', '&&', 'bash', 'tpu_scripts/host_job.sh', 'start', 'train', '--',
        'env', 'TPU_STDERR_LOG_LEVEL=0', '../venv/bin/python3', 'main.py', '--gin_file=gin/h7.gin',
        '--gin_file=gin/extra.gin', f'--gin_bindings={binding}', '--gin_bindings=a.b = 3',
        '--mode=train', '--model_dir=gs://my-bucket/runs/h7', '--tpu=local', '--experiment=x y']
    assert remote_command(lines[1]) == 'cd halonet/src && bash tpu_scripts/host_job.sh wait train'
    assert remote_command(lines[2]) == ('cd halonet/src && bash tpu_scripts/host_job.sh wait train '
                                        '--quiet')


def test_train_detach_only_starts(sandbox):
    lines = sandbox.dry('train.sh', *POD, *MAIN, '--detach')
    assert len(lines) == 1 and 'host_job.sh start train' in lines[0]


def test_environment_presets(sandbox):
    env = {'HALONET_TPU_NAME': 'h0-v3', 'HALONET_ZONE': 'europe-west4-a',
           'HALONET_ACCELERATOR_TYPE': 'v3-8', 'HALONET_PROJECT': 'p9'}
    lines = sandbox.dry('train.sh', *MAIN, extra_env=env)
    assert lines[0].startswith('gcloud compute tpus tpu-vm ssh h0-v3 --zone=europe-west4-a '
                               '--project=p9 ')
    # A flag beats the preset.
    lines = sandbox.dry('train.sh', *MAIN, '--zone', 'us-central1-b', extra_env=env)
    assert '--zone=us-central1-b' in lines[0]


def test_tpu_value_reaches_every_host(sandbox):
    lines = sandbox.dry('run.sh', *POD, *MAIN, '--tpu', 'h7-pod', '--skip-setup')
    assert remote_command(lines[1]).endswith('--tpu=h7-pod')
    assert remote_command(lines[4]).endswith('--mode=export --model_dir=gs://my-bucket/h0')
    lines = sandbox.dry('export.sh', *POD, *MAIN, '--tpu', 'h7-pod', '--on-tpu')
    assert remote_command(lines[0]).endswith('--tpu=h7-pod')


def test_eval(sandbox):
    lines = sandbox.dry('eval.sh', *POD, *MAIN)
    assert len(lines) == 3
    assert shlex.split(remote_command(lines[0]))[5:] == [
        'start', 'eval', '--', '../venv/bin/python3', 'main.py', '--gin_file=gin/h0.gin',
        '--mode=eval', '--model_dir=gs://my-bucket/h0', '--tpu=local']
    assert '--worker=all' in shlex.split(lines[0])


def test_export_runs_on_worker_0_without_tpu(sandbox):
    lines = sandbox.dry('export.sh', *POD, *MAIN)
    assert lines == [
        "gcloud compute tpus tpu-vm ssh h7-pod --zone=europe-west4-a --worker=0 '--command=cd "
        'halonet/src && bash tpu_scripts/host_job.sh start export -- ../venv/bin/python3 main.py '
        "--gin_file=gin/h0.gin --mode=export --model_dir=gs://my-bucket/h0'",
        "gcloud compute tpus tpu-vm ssh h7-pod --zone=europe-west4-a --worker=0 '--command=cd "
        "halonet/src && bash tpu_scripts/host_job.sh wait export'"]
    single = sandbox.dry('export.sh', *SINGLE, *MAIN)
    assert not any('--worker' in line for line in single)
    on_tpu = sandbox.dry('export.sh', *POD, *MAIN, '--on-tpu')
    assert '--worker=all' in shlex.split(on_tpu[0])
    assert remote_command(on_tpu[0]).endswith('--mode=export --model_dir=gs://my-bucket/h0 --tpu=local')


# ------------------------------------------------------------------------------------ logs, delete

def test_logs(sandbox):
    assert sandbox.dry('logs.sh', *POD, '--follow') == [
        "gcloud compute tpus tpu-vm ssh h7-pod --zone=europe-west4-a --worker=0 '--command=cd "
        "halonet/src && bash tpu_scripts/host_job.sh logs train --lines 100 --follow'"]
    line, = sandbox.dry('logs.sh', *SINGLE, '--job', 'eval', '--lines', '20')
    assert line == ("gcloud compute tpus tpu-vm ssh h0-v3 --zone=europe-west4-a '--command=cd "
                    "halonet/src && bash tpu_scripts/host_job.sh logs eval --lines 20'")
    line, = sandbox.dry('logs.sh', *POD, '--worker', 'all', '--status')
    assert '--worker=all' in shlex.split(line)
    assert remote_command(line).endswith('host_job.sh status train')


def test_delete(sandbox):
    assert sandbox.dry('delete.sh', '--name', 'h7-pod', '--zone', 'europe-west4-a') == [
        'gcloud compute tpus tpu-vm delete h7-pod --zone=europe-west4-a --quiet']
    assert sandbox.dry('delete.sh', *POD, '--project', 'p', '--async') == [
        'gcloud compute tpus tpu-vm delete h7-pod --zone=europe-west4-a --project=p --quiet --async']


# ---------------------------------------------------------------------------------- run end to end

def test_run_end_to_end_pod(sandbox):
    lines = sandbox.dry('run.sh', *POD, '--gin_file', 'gin/h7.gin', '--model_dir',
                        'gs://my-bucket/h7', '--spot', '--python', 'python3.12',
                        '--gin_bindings', 'x.y = 1')
    verbs = [shlex.split(line)[4] if line.startswith('gcloud') else shlex.split(line)[0]
             for line in lines]
    assert verbs == ['create', 'git', 'scp', 'ssh', 'ssh', 'ssh', 'ssh', 'ssh', 'ssh', 'delete']
    assert lines[0] == ('gcloud compute tpus tpu-vm create h7-pod --zone=europe-west4-a '
                        '--accelerator-type=v3-128 --version=tpu-ubuntu2204-base --spot')
    assert remote_command(lines[3]).endswith('host_setup.sh --python python3.12')
    assert 'start train -- ../venv/bin/python3 main.py --gin_file=gin/h7.gin ' \
           "'--gin_bindings=x.y = 1' --mode=train_and_eval --model_dir=gs://my-bucket/h7 " \
           '--tpu=local' in remote_command(lines[4])
    assert 'wait train' in remote_command(lines[5]) and '--worker=0' in lines[5]
    assert 'wait train --quiet' in remote_command(lines[6]) and '--worker=all' in lines[6]
    assert 'start export' in remote_command(lines[7]) and '--worker=0' in lines[7]
    assert lines[9] == 'gcloud compute tpus tpu-vm delete h7-pod --zone=europe-west4-a --quiet'
    for line in lines[2:9]:
        assert ('--worker=all' in line) or ('--worker=0' in line)


def test_run_keep_tpu_and_skips(sandbox):
    lines = sandbox.dry('run.sh', *SINGLE, *MAIN, '--keep-tpu', '--skip-create', '--skip-export')
    verbs = [shlex.split(line)[4] if line.startswith('gcloud') else 'git' for line in lines]
    assert verbs == ['git', 'scp', 'ssh', 'ssh', 'ssh']
    lines = sandbox.dry('run.sh', *SINGLE, *MAIN, '--skip-setup')
    assert [shlex.split(line)[4] for line in lines] == ['create', 'ssh', 'ssh', 'ssh', 'ssh',
                                                        'delete']


# ----------------------------------------------------- execution against a fake TPU VM (no dry run)

@pytest.fixture
def fake_tpu_home(sandbox, tmp_path):
    """A TPU VM home with the project copy's tpu_scripts and a venv python that echoes its argv."""
    home = tmp_path / 'tpu_home'
    src = home / 'halonet' / 'src'
    shutil.copytree(SCRIPTS, src / 'tpu_scripts')
    venv_bin = home / 'halonet' / 'venv' / 'bin'
    venv_bin.mkdir(parents=True)
    python = venv_bin / 'python3'
    python.write_text('#!/usr/bin/env bash\nprintf "ARG[%s]\\n" "$@"\nexit "${FAKE_MAIN_RC:-0}"\n')
    python.chmod(0o755)
    return home


def test_train_runs_main_py_on_the_host_and_returns_its_status(sandbox, fake_tpu_home):
    env = {'FAKE_TPU_HOME': str(fake_tpu_home)}
    binding = "Trainer.name = 'it''s'"
    proc = sandbox.run('train.sh', *SINGLE, *MAIN, '--gin_bindings', binding, '--',
                       '--extra=a b', extra_env=env)
    assert [c[3] for c in sandbox.gcloud_calls()] == ['ssh', 'ssh']
    # main.py got exactly these arguments, through two shells and the job runner.
    expected = ['main.py', '--gin_file=gin/h0.gin', f'--gin_bindings={binding}',
                '--mode=train_and_eval', '--model_dir=gs://my-bucket/h0', '--tpu=local',
                '--extra=a b']
    assert [f'ARG[{a}]' for a in expected] == [
        line for line in proc.stdout.splitlines() if line.startswith('ARG[')]
    assert 'job train on' in proc.stdout and 'exited 0' in proc.stdout
    log = (fake_tpu_home / 'halonet' / 'logs' / 'train.log').read_text()
    assert 'ARG[--tpu=local]' in log

    # A failing main.py fails train.sh with its exit status.
    proc = sandbox.run('train.sh', *SINGLE, *MAIN, extra_env={**env, 'FAKE_MAIN_RC': '3'},
                       check_rc=3)
    assert 'exited 3' in proc.stdout
    assert (fake_tpu_home / 'halonet' / 'logs' / 'train.log.prev').exists()


def test_pod_train_waits_on_every_host(sandbox, fake_tpu_home):
    env = {'FAKE_TPU_HOME': str(fake_tpu_home)}
    sandbox.run('train.sh', *POD, *MAIN, extra_env=env)
    calls = sandbox.gcloud_calls()
    assert [[a for a in c if a.startswith('--worker')] for c in calls] == [
        ['--worker=all'], ['--worker=0'], ['--worker=all']]
    proc = sandbox.run('logs.sh', *POD, '--lines', '3', extra_env=env)
    assert proc.stdout.splitlines()[-1] == 'ARG[--tpu=local]'


def test_create_and_delete_call_gcloud_with_the_printed_arguments(sandbox):
    env = {'FAKE_TPU_HOME': str(sandbox.path)}
    dry_create, = sandbox.dry('create.sh', *POD, '--spot')
    dry_delete, = sandbox.dry('delete.sh', *POD)
    sandbox.run('create.sh', *POD, '--spot', extra_env=env)
    sandbox.run('delete.sh', *POD, extra_env=env)
    calls = sandbox.gcloud_calls()
    assert calls == [shlex.split(dry_create)[1:], shlex.split(dry_delete)[1:]]


def test_run_deletes_the_tpu_when_training_fails(sandbox, fake_tpu_home):
    env = {'FAKE_TPU_HOME': str(fake_tpu_home), 'FAKE_MAIN_RC': '5'}
    sandbox.run('run.sh', *SINGLE, *MAIN, '--skip-setup', extra_env=env, check_rc=5)
    verbs = [c[3] for c in sandbox.gcloud_calls()]
    assert verbs == ['create', 'ssh', 'ssh', 'delete']


# --------------------------------------------------------------------------- host_job.sh on its own

def test_host_job_start_wait_status_logs(tmp_path):
    job = [str(SCRIPTS / 'host_job.sh')]
    base = ['--base', str(tmp_path)]

    def host_job(*args, rc=0):
        # --base goes before the action's arguments: everything after '--' is the command.
        proc = subprocess.run([*job, *base, *args], capture_output=True, text=True, timeout=30)
        assert proc.returncode == rc, (proc.stdout, proc.stderr)
        return proc

    assert host_job('status', 'j').stdout == 'never started\n'
    host_job('wait', 'j', rc=2)
    host_job('start', 'j', '--', 'sh', '-c', 'echo one; sleep 1; echo two; exit 4')
    proc = host_job('start', 'j', '--', 'true', rc=2)
    assert "job 'j' is already running" in proc.stderr
    proc = host_job('wait', 'j', rc=4)
    assert proc.stdout.splitlines()[-3:] == ['one', 'two', f'job j on {os.uname().nodename}: exited 4']
    assert host_job('status', 'j').stdout == 'exited 4\n'
    assert host_job('logs', 'j', '--lines', '1').stdout == 'two\n'
    host_job('start', 'q', '--', 'sh', '-c', 'echo failing; exit 1')
    proc = host_job('wait', 'q', '--quiet', rc=1)
    assert 'exited 1' in proc.stdout and 'failing' in proc.stdout
