"""Suite-wide guards: no network, no hub downloads."""
import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection to a non-loopback address fails the test (socket.create_connection goes through
    socket.connect too); loopback stays open for torch.distributed's local rendezvous."""
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            raise NetworkBlocked(f"test tried to open a network connection to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    yield


@pytest.fixture(scope="module")
def single_thread():
    """For modules of tiny-tensor parity tests: a second intra-op thread only adds OpenMP waiting (5-10x
    slower on a shared 2-core machine). Use with pytestmark = pytest.mark.usefixtures("single_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
