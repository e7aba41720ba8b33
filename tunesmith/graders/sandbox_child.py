"""The process a python grader's source runs in: ``python -I sandbox_child.py MEMORY_MB CPU_S``, started
by sandbox.py in an empty directory with an empty environment. Standard library only: it is run as a
script, without tunesmith on its path.

Before the source is compiled it limits itself (address space, CPU time, no file writes, few file
descriptors, no new processes), becomes nobody if it was started as root, and installs an audit hook
that refuses opening files, importing a module not already loaded, and the os, socket, subprocess and
ctypes events. The modules a grader may need are imported first, because importing opens files.
This is a sandbox in Python, which determined code can probe (nothing here is a kernel boundary like
seccomp or namespaces); it keeps a grader from reading or changing the host by accident or by the
obvious means, and the limits and the parent's timeout bound what it can use.

Protocol, one JSON object a line: the parent sends ``{"source": ...}``, answered ``{"ready": true}`` or
``{"error": ...}``; then ``{"sample": ..., "item": ...}`` for each sample, answered ``{"score": x}`` or
``{"error": ...}``. It speaks on copies of its stdin and stdout; fds 0 and 1 are then /dev/null, so a
grader that prints or reads cannot corrupt the protocol.
"""

import importlib
import json
import math
import os
import resource
import sys

# What a grader may import: OpenAI's python graders get the standard library's pure computation.
ALLOWED = ("json", "math", "re", "string", "collections", "itertools", "functools", "statistics", "difflib",
           "decimal", "fractions", "unicodedata", "datetime", "random", "operator", "heapq", "bisect", "copy",
           "textwrap", "typing", "time", "_strptime", "encodings.idna", "encodings.latin_1", "encodings.ascii")
# Audit events refused once the source runs (prefixes). "import" and "open" are refused outright.
REFUSED = ("os.", "socket.", "subprocess.", "ctypes.", "shutil.", "mmap.", "pty.", "webbrowser.", "glob.",
           "resource.prlimit", "sys.addaudithook", "_thread.start_new_thread", "sqlite3.", "urllib.")
NOBODY = 65534  # the uid and gid a child started as root runs as
MAX_ERROR = 2000  # characters of an error message sent back


def describe(exc: BaseException) -> str:
    """``Type: message (line N)``; the line is the last one of the grader's source in the traceback
    (not formatted by the traceback module: that opens source files)."""
    try:
        message = f"{type(exc).__name__}: {exc}"
    except BaseException:  # noqa: BLE001  (a grader's exception whose __str__ itself fails)
        message = type(exc).__name__
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<grader>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return message[:MAX_ERROR] + (f" (line {line})" if line else "")


def install_hook(allowed: tuple[str, ...]) -> None:
    # Everything the hook uses is bound now: a grader that replaces builtins or module globals
    # cannot change what the hook does.
    def hook(event, args, _refused=REFUSED, _startswith=str.startswith, _cpu=resource.RLIMIT_CPU,
             _denied=PermissionError, _import=ImportError,
             _allowed=", ".join(n for n in allowed if not n.startswith(("_", "encodings")))):
        if event == "open":
            raise _denied("a python grader may not open files")
        if event == "import":
            raise _import(f"a python grader may not import {args[0]}; it may import {_allowed}")
        if event == "resource.setrlimit":
            if args[0] != _cpu:  # the CPU limit is moved on before each sample (and only bounds time)
                raise _denied("a python grader may not change its limits")
        elif event == "object.__setattr__":
            if args[0] is hook or args[1] == "__code__":
                raise _denied("a python grader may not replace code")
        elif _startswith(event, _refused):
            raise _denied(f"a python grader may not use {event}")

    sys.addaudithook(hook)


def main() -> None:
    memory_mb, cpu_s = int(sys.argv[1]), int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU dumps core by default
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork, no threads
    for name in ALLOWED:
        importlib.import_module(name)
    # pwd reads the host's user database through libc, past the hook (site loads it: no HOME here);
    # create_builtin would load a built-in module (pwd, gc) without the import event.
    sys.modules.pop("pwd", None)
    importlib._bootstrap._imp.create_builtin = None
    if os.geteuid() == 0:  # root ignores RLIMIT_NPROC and may raise its limits: become nobody
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    requests, replies = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]

    def reply(message: dict) -> None:
        replies.write(json.dumps(message).encode() + b"\n")
        replies.flush()

    source = json.loads(requests.readline())["source"]
    install_hook(ALLOWED)
    namespace = {"__name__": "grader"}
    try:
        exec(compile(source, "<grader>", "exec"), namespace)  # noqa: S102  (the point of this process)
        grade = namespace.get("grade")
        if not callable(grade):
            raise TypeError("the source defines no function grade(sample, item)")
    except BaseException as exc:  # noqa: BLE001  (SystemExit and MemoryError too: all are the grader's)
        reply({"error": describe(exc)})
        return
    reply({"ready": True})
    for line in requests:
        request = json.loads(line)
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(used) + cpu_s, cpu_hard))
        try:
            result = grade(request["sample"], request["item"])
            if type(result) not in (bool, int, float):
                raise TypeError(f"grade returned {type(result).__name__}, not a number")
            score = float(result)
            if not math.isfinite(score):
                raise ValueError(f"grade returned {score}, not a finite number")
            reply({"score": score})
        except MemoryError:
            reply({"error": f"exceeded {memory_mb} MB memory"})
        except BaseException as exc:  # noqa: BLE001
            reply({"error": describe(exc)})


if __name__ == "__main__":
    main()
