"""``pipeline_events.process_ended``, which the fault tests use to know when a killed process's sockets are closed."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from pipeline_events import process_ended, wait_until

# The main thread ends (pthread_exit) while another thread holds a listening socket open for a while: the
# process's main thread is then a zombie, as a killed gateway's can be while its other threads run down.
ZOMBIE_LEADER = """
import ctypes, socket, sys, threading, time
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
threading.Thread(target=time.sleep, args=(float(sys.argv[1]),)).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def takes_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_zombie_main_thread_with_a_live_thread_has_not_ended_and_its_socket_is_open() -> None:
    with subprocess.Popen([sys.executable, "-c", ZOMBIE_LEADER, "3"], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            port = int(child.stdout.readline())
            status = Path(f"/proc/{child.pid}/status")
            wait_until(lambda: "State:\tZ" in status.read_text(), 10, "the main thread to exit")
            assert not process_ended(child.pid)
            assert takes_connections(port)
            wait_until(lambda: process_ended(child.pid), 10, "the last thread to exit")
            assert not takes_connections(port)
        finally:
            child.kill()


def test_a_reaped_process_has_ended() -> None:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as child:
        child.wait()
    assert process_ended(child.pid)
