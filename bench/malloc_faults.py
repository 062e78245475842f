"""Page faults of a perturbation's temporaries under glibc's default malloc thresholds and under raised ones.

A 454x454 card in float64 (4.9 MB) and the temporaries a perturbation makes of it, 100 times in the main
thread and 100 times in a second thread (robustness perturbs in `local.workers` threads). With glibc's
defaults freed memory goes back to the kernel and each new array is faulted in again page by page.
bench/RESULTS.md, "Where robustness's kernel time goes", has the figures and why the setting is not adopted.

    python bench/malloc_faults.py default
    python bench/malloc_faults.py raised     # mallopt(M_MMAP_THRESHOLD, 64 MB), mallopt(M_TRIM_THRESHOLD, 256 MB)
"""
import ctypes
import resource
import sys
import threading

import numpy as np


def temporaries(times: int) -> None:
    for _ in range(times):
        image = np.ones((454, 454, 3), np.float64)
        blurred = image * 0.5 + 1
        noisy = np.clip(blurred + image, 0, 1)
        (noisy * 255).astype(np.float32)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "default"
    if mode == "raised":
        mallopt = ctypes.CDLL(None).mallopt
        assert mallopt(-3, 64 << 20) == 1 and mallopt(-1, 256 << 20) == 1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    temporaries(100)
    main_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    thread = threading.Thread(target=temporaries, args=(100,))
    thread.start()
    thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{mode}: faults main thread {main_faults}, second thread {usage.ru_minflt - before - main_faults}; "
          f"user {usage.ru_utime:.2f} s, system {usage.ru_stime:.2f} s")


if __name__ == "__main__":
    main()
