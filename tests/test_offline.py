"""The suite really is offline: the guard in conftest.py stops outbound connections."""
import socket

import pytest

from conftest import NetworkBlocked


def test_outbound_connection_is_blocked():
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("93.184.216.34", 80), timeout=1)


def test_hub_download_fails_offline(tmp_path):
    from transformers import AutoConfig
    with pytest.raises(Exception):
        AutoConfig.from_pretrained("google/vit-base-patch16-224-in21k", cache_dir=str(tmp_path))
