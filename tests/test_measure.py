"""Measuring on a device (encnet_lite.measure): timing, peak memory, the machine."""

import mmap
import os
import time

import pytest
import torch

from encnet_lite import measure

CPU = torch.device("cpu")
MIB = 2**20
# The smallest step perf_counter can show: a measured interval may read this much short.
TICK = time.get_clock_info("perf_counter").resolution


def test_timed_measures_a_sleep_within_the_time_around_it():
    seconds = 0.05
    outer = time.perf_counter()
    t = measure.timed(lambda: time.sleep(seconds), CPU)
    outer = time.perf_counter() - outer
    # sleep() waits at least its argument; the call's own clock runs inside the outer one
    assert seconds - TICK <= t["wall_s"] <= outer + TICK
    assert 0 <= t["cpu_s"] < t["wall_s"]  # sleeping costs (almost) no CPU time


def test_timed_rounds_interleaves_and_counts():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = measure.timed_rounds(fns, CPU, rounds=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # one warm-up each, then taking turns
    assert {k: len(v["wall_s"]) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v["wall_s"] + v["cpu_s"])


def test_timed_rounds_times_each_call_of_a_sleep():
    seconds = 0.02
    times = measure.timed_rounds({"s": lambda: time.sleep(seconds)}, CPU, rounds=2, warmup=0)
    assert all(w >= seconds - TICK for w in times["s"]["wall_s"])
    assert measure.best(times["s"]["wall_s"]) == min(times["s"]["wall_s"])


def test_best_is_the_least_disturbed_timing():
    assert measure.best([0.3, 0.1, 0.2]) == 0.1


def test_extra_peak_bytes_sees_a_temporary_tensor_on_cpu():
    def allocate():
        x = torch.ones(8 * MIB // 4)  # 8 MiB of float32, freed on return
        return float(x[0])

    peak = measure.extra_peak_bytes(allocate, CPU)
    # torch's allocator counts the tensor's bytes plus at most its rounding and x[0]'s scalar
    assert 8 * MIB <= peak < 9 * MIB
    assert "profiler" in measure.memory_method(CPU)


def test_extra_peak_bytes_forgets_what_an_earlier_profiled_call_left():
    """The profiler's running total keeps a tensor allocated under an earlier profile and
    freed after it; the next call's extra peak must not include it."""
    kept = []
    measure.extra_peak_bytes(lambda: kept.append(torch.ones(4 * MIB // 4)), CPU)
    kept.clear()  # freed while nothing is profiled

    def allocate():
        x = torch.ones(2 * MIB // 4)
        return float(x[0])

    assert 2 * MIB <= measure.extra_peak_bytes(allocate, CPU) < 3 * MIB
    assert measure.extra_peak_bytes(lambda: None, CPU) == 0


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_cpu_peak_grows_by_at_least_a_tensor_allocated_after_the_reset():
    """The resident set's high-water mark (VmHWM) starts from the resident set at the reset;
    fresh pages written in full are resident, so the peak grows by at least their bytes.
    (An anonymous mapping, not a tensor: malloc may hand a tensor pages an earlier test
    freed but the process kept resident, which would not grow the resident set.)"""
    measure.reset_peak(CPU)
    before = measure.peak_memory(CPU)
    nbytes = 64 * MIB
    fresh = mmap.mmap(-1, nbytes)
    fresh.write(b"\x01" * nbytes)  # every page touched
    grown = measure.peak_memory(CPU) - before
    fresh.close()
    assert grown >= nbytes
    assert measure.peak_memory(CPU) >= measure.memory_now(CPU) > 0


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_cpu_peak_counts_only_what_follows_the_reset():
    """The budget's CPU peak must not include what the process did before (an earlier test,
    an earlier chapter cell): a 400 MiB tensor touched and freed first is not counted."""
    big = torch.ones(400 * MIB // 4)
    big.add_(1)
    del big
    lifetime = measure.peak_rss()
    measure.reset_peak(CPU)
    after = measure.peak_memory(CPU)
    assert after <= lifetime - 300 * MIB
    assert after >= measure.memory_now(CPU) > 0


def test_memory_limit_on_cpu_is_the_machines_memory():
    limit = measure.memory_limit(CPU)
    assert limit is None or limit >= measure.memory_now(CPU)


def test_machine_describes_the_cpu_once():
    info = measure.machine(CPU)
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    assert info["cpu"] == info["device_name"] == measure.cpu_name() != ""
    assert info["torch_threads"] == torch.get_num_threads()
    assert len(info["load_average_at_start"]) in (0, 3)
    assert "gpu" not in info
