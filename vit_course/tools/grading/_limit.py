"""Exec a command under a memory limit: ``python -m vit_course.tools.grading._limit --memory-mb N -- CMD...``.

Used as the kernel's launcher so only the grading kernel (and what it starts) is capped.
The cap is ``RLIMIT_DATA`` (heap and private writable mappings, Linux ≥ 4.7): torch alone
reserves ~3 GB of address space it never touches, so ``RLIMIT_AS`` would cap the wrong
thing. Other systems: no cap (documented in docs/GRADING.md). ``N <= 0`` means no cap.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[0] != "--memory-mb" or argv[2] != "--":
        raise SystemExit("usage: python -m vit_course.tools.grading._limit --memory-mb N -- CMD [ARGS...]")
    memory_mb, command = int(argv[1]), argv[3:]
    if memory_mb > 0 and sys.platform.startswith("linux"):
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
