"""A bubblewrap (``bwrap``) sandbox for one submission: what its kernel may see and do.

``bwrap_argv(job_dir, hide=...)`` is the command prefix the executor runs the grading child
(``_run_one``: nbclient and the kernel) under:

- read-only: ``/usr`` (and its ``/bin``, ``/lib`` links), a few files of ``/etc``, the Python
  installation and the course's virtual environment, the ``vit_course`` package with
  ``tools/grading/reference.py`` (the reference solution) masked by an empty file, and the
  data, artifacts and ``TORCH_HOME`` folders the exercise reads;
- writable: ``/grading`` (this submission's job folder: its copy of the notebook, the hidden
  inputs, the results) and a private ``/tmp`` (gone when the sandbox ends);
- nothing else: not the submissions folder, the source notebook, other students' jobs, the
  grader's CSV and feedback, the checkout, ``$HOME``. Anything of those that lies inside a
  read-only folder above is masked too (``hide``).
- no network (``--unshare-net``: only a private loopback), own PID, IPC and UTS namespaces,
  ``--die-with-parent`` (no process outlives its submission), a new session, no
  capabilities, a cleared environment (only what the course needs is passed in).

``bwrap_problem()`` says why bwrap cannot be used here (``None`` when it can).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

JOB_MOUNT = "/grading"
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group", "nsswitch.conf",
             "hosts", "fonts", "mime.types", "alternatives", "ssl/openssl.cnf")
PASSED_ENV = ("LANG", "LC_ALL", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED", "MPLBACKEND",
              "TORCH_HOME", "CUDA_VISIBLE_DEVICES")
ISOLATION = ("--die-with-parent", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--new-session", "--cap-drop", "ALL")


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """Why a bwrap sandbox cannot start here, or ``None`` when it can (checked once)."""
    argv = ["bwrap", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", *ISOLATION, "true"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    except subprocess.TimeoutExpired:
        return "bwrap did not start within 30 s"
    if result.returncode != 0:
        return f"bwrap cannot create a sandbox here: {result.stderr.strip()[:300]}"
    return None


def course_paths() -> list[Path]:
    """Folders the sandbox sees read-only: Python, the venv, the package, data, artifacts, torch cache."""
    import vit_course
    from vit_course.data.download import default_data_dir
    from vit_course.runtime import artifacts_dir

    paths = [Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parents[1],
             Path(vit_course.__file__).resolve().parent, artifacts_dir().resolve(), default_data_dir()]
    if os.environ.get("TORCH_HOME"):
        paths.append(Path(os.environ["TORCH_HOME"]))
    seen: list[Path] = []
    for p in (p.resolve() for p in paths if p.exists()):
        if p not in seen and not any(p.is_relative_to(q) for q in seen):
            seen = [q for q in seen if not q.is_relative_to(p)] + [p]
    return seen


#: Variables naming folders: made absolute before a kernel gets them, since the kernel works in
#: another folder than the grader (a relative ``VIT_COURSE_ARTIFACTS`` would point at an empty
#: folder there and make every submission retrain the synthetic ViT).
PATH_ENV = ("TORCH_HOME", "VIT_COURSE_ARTIFACTS", "VIT_COURSE_DATA_DIR")


def absolute_paths(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the folders of :data:`PATH_ENV` resolved against the grader's folder."""
    return {k: str(Path(v).expanduser().resolve()) if k in PATH_ENV and v else v for k, v in env.items()}


def thread_env(threads: int | None) -> dict[str, str]:
    """``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` for a kernel's torch, or nothing when ``None``."""
    return {} if threads is None else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def sandbox_env(token_env: str, token: str) -> dict[str, str]:
    """The environment inside: a cleared one plus what the course and the kernel need."""
    from vit_course.data.download import default_data_dir
    from vit_course.runtime import artifacts_dir

    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("VIT_COURSE_")})
    env.update({
        "PATH": f"{Path(os.path.abspath(sys.executable)).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp/home", "IPYTHONDIR": "/tmp/ipython", "JUPYTER_RUNTIME_DIR": "/tmp/runtime",
        "JUPYTER_CONFIG_DIR": "/tmp/jupyter", "MPLCONFIGDIR": "/tmp/matplotlib", "PYTHONDONTWRITEBYTECODE": "1",
        "VIT_COURSE_ARTIFACTS": str(artifacts_dir().resolve()), "VIT_COURSE_DATA_DIR": str(default_data_dir()),
        token_env: token,
    })
    env.setdefault("MPLBACKEND", "Agg")
    return absolute_paths(env)


def bwrap_argv(job_dir: Path, empty_file: Path, env: dict[str, str], hide: list[Path]) -> list[str]:
    """``bwrap`` options that run a command in the sandbox described above, cwd ``/grading/work``."""
    argv = ["bwrap", *ISOLATION, "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "sbin", "lib32"):
        top = Path("/") / name
        if top.is_symlink():
            argv += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            argv += ["--ro-bind", str(top), str(top)]
    for name in ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--tmpfs", "/tmp"]
    readable = course_paths()
    for path in readable:
        argv += ["--ro-bind", str(path), str(path)]
    package = Path(__import__("vit_course").__file__).resolve().parent / "tools" / "grading"
    masks = [package / "reference.py", *sorted((package / "__pycache__").glob("reference.*"))]
    for path in [p.resolve() for p in hide if p.exists()]:
        if any(path.is_relative_to(r) for r in readable):
            masks.append(path)
    for path in masks:
        argv += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", str(empty_file), str(path)]
    argv += ["--bind", str(job_dir), JOB_MOUNT, "--chdir", f"{JOB_MOUNT}/work", "--clearenv"]
    for key, value in sorted(env.items()):
        argv += ["--setenv", key, value]
    return argv + ["--"]
