"""The command's allocator setting: applied on glibc, left alone where the user set malloc's variables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CHECK = "from vqcodec.allocator import keep_freed_memory; print(keep_freed_memory())"


def applied(env: dict[str, str]) -> bool:
    """Whether ``keep_freed_memory`` took effect in a fresh process with ``env``."""
    command = [sys.executable, "-c", CHECK]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return result.stdout.strip() == "True"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_unless_the_user_set_malloc() -> None:
    own = {key: value for key, value in os.environ.items() if not key.startswith(("MALLOC_", "GLIBC_"))}
    assert applied(own)
    assert not applied({**own, "MALLOC_TRIM_THRESHOLD_": "131072"})
