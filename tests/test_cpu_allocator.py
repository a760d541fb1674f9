import platform

import pytest

from recipe.train import cpu_allocator
from recipe.train.cpu_allocator import keep_freed_memory_in_process

on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not on_glibc, reason="glibc-only allocator setting")
def test_thresholds_are_set_on_glibc(monkeypatch):
    for name in cpu_allocator.ENVIRONMENT_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory_in_process() is True


@pytest.mark.parametrize("name", cpu_allocator.ENVIRONMENT_SETTINGS)
def test_an_allocator_chosen_in_the_environment_is_left_alone(monkeypatch, name):
    monkeypatch.setenv(name, "1")
    assert keep_freed_memory_in_process() is False


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(cpu_allocator.platform, "system", lambda: "Darwin")
    assert keep_freed_memory_in_process() is False
