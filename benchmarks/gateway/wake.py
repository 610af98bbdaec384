"""What one ``send`` costs the sender when it wakes a reader asleep on another CPU (this VM's floor for
any proxy). ``python wake.py`` prints the median and p90 of a 300-byte loopback TCP ``send``, by the
time the reader has been idle. On the 2-vCPU VMs here: 2–6 µs back to back, 15–25 µs once the
reader has slept 100 µs or more."""

from __future__ import annotations

import os
import socket
import time


def measure(gap_us: float, reader_cpu: int, sends: int = 3000) -> tuple[float, float]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    pid = os.fork()
    if pid == 0:  # the reader: blocks in recv until the writer closes
        os.sched_setaffinity(0, {reader_cpu})
        conn, _ = listener.accept()
        while conn.recv(65536):
            pass
        os._exit(0)
    os.sched_setaffinity(0, {0})
    sock = socket.create_connection(listener.getsockname())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data, times = b"x" * 300, []
    for _ in range(sends):
        t = time.perf_counter()
        sock.send(data)
        times.append(time.perf_counter() - t)
        until = time.perf_counter() + gap_us / 1e6
        while time.perf_counter() < until:  # busy: the writer's own CPU stays awake
            pass
    sock.close()
    listener.close()
    os.waitpid(pid, 0)
    times.sort()
    return times[len(times) // 2] * 1e6, times[len(times) * 9 // 10] * 1e6


if __name__ == "__main__":
    for gap in (0, 20, 50, 100, 200, 400):
        p50, p90 = measure(gap, reader_cpu=1)
        print(f"reader idle {gap:>3} µs between sends: send p50 {p50:.1f} µs, p90 {p90:.1f} µs")
