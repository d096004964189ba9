"""`keep_freed_cpu_memory`: once the heap has grown to its working size, a freed big buffer
is reused without faulting its pages again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import resource, torch
import saelab.sae.trainer  # the process as it is when training: every module the trainer loads
from saelab.sae.memory import keep_freed_cpu_memory

def faults_of_a_fresh_64mb_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(1 << 24)  # 64 MB, touched, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_a_fresh_64mb_tensor()
plain = faults_of_a_fresh_64mb_tensor()
assert keep_freed_cpu_memory() and keep_freed_cpu_memory()  # takes effect, idempotent
for _ in range(4):  # the heap grows to its working size over the first few (as in training)
    faults_of_a_fresh_64mb_tensor()
kept = sorted(faults_of_a_fresh_64mb_tensor() for _ in range(5))[2]  # the median
print(plain, kept)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_buffers_are_reused_without_page_faults():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    ).stdout
    plain, kept = map(int, out.split())
    pages = (64 << 20) // 4096
    assert plain > pages // 2, f"expected glibc to fault the fresh buffer in: {plain} faults"
    assert kept < pages // 20, f"the freed buffer was not reused: {kept} faults"
