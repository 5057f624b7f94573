"""A device outside the cluster: its real service behind a DeviceGateway on 127.0.0.1, reached by a
RemoteDevice that speaks only JSON and safetensors bytes.

The campaign's cycle over the gateway gives exactly what it gives with the device in-process; a
gateway that answers with a pickle, claims another device, or is down costs that device's call,
never the campaign or the cloud model.
"""

from __future__ import annotations

import http.server
import pickle
import threading

import pytest
import torch

from eclm.campaign.coordinator import CycleCoordinator
from eclm.campaign.local import LocalFleet
from eclm.campaign.store import MemoryStore
from eclm.config import PlatformConfig
from eclm.gateway import (
    DeviceGateway,
    DeviceUnreachable,
    MalformedFrameError,
    RemoteDevice,
    RemoteDeviceError,
)
from eclm.gateway.wire import encode_frame
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> PlatformConfig:
    return PlatformConfig.from_dict({
        "name": "gateway", "workdir": str(tmp_path_factory.mktemp("gateway")),
        "data": {"source": "digits", "image_size": 16, "num_devices": 3, "classes_per_device": 3,
                 "samples_per_device": [30, 40]},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}, "modules_per_layer": 2},
        "offline": {"epochs": 1, "enhance_epochs": 0, "batch_size": 32, "classes_per_subtask": 3},
        "devices": [{"name": "d0"}, {"name": "d1", "params_fraction": 0.6}, {"name": "d2"}],
        "adaptation": {"epochs": 1},
        "tracking": {"enabled": False},
    })


def _campaign(cfg: PlatformConfig, remote: dict[str, str], cycles: int = 2):
    """Cycles with the devices of ``remote`` reached over their gateways; (results, cloud digest)."""
    def device(i: int, name: str):
        if name in remote:
            return lambda: RemoteDevice(name, remote[name], timeout_s=120)
        return lambda: EdgeService(cfg, i)

    fleet = LocalFleet(lambda: CloudService(cfg), {d.name: device(i, d.name) for i, d in enumerate(cfg.devices)})
    co = CycleCoordinator(fleet, cfg, store=MemoryStore())
    co.connect()
    co.pretrain()
    results = []
    for _ in range(cycles):
        co.observe()
        results.append(co.run_cycle(reason="test"))
    digest = fleet.gather({"d": fleet.cloud.state_digest()})[0]["d"]
    fleet.close()
    return results, digest


@pytest.fixture()
def gateway(cfg):
    servers = []

    def start(index: int, service=None) -> DeviceGateway:
        servers.append(DeviceGateway(service or EdgeService(cfg, index)).start())
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_a_campaign_over_the_gateway_equals_the_campaign_in_process(cfg, gateway):
    local, local_digest = _campaign(cfg, {})
    g = gateway(1)
    remote, remote_digest = _campaign(cfg, {"d1": g.url})
    assert remote_digest == local_digest  # the same cloud model, bit for bit
    for a, b in zip(local, remote, strict=True):
        assert not b.failures and a.merge.decision == b.merge.decision and a.merge.accepted == b.merge.accepted
        assert a.devices == b.devices and a.bytes_up == b.bytes_up and a.bytes_down == b.bytes_down


def test_the_proxy_counts_what_crossed_the_channel(cfg, gateway):
    g = gateway(0)
    device = RemoteDevice("d0", g.url)
    cloud = CloudService(cfg)
    summary = device.summary(cloud.selector_payload())
    package = cloud.derive(summary)
    report = device.install(package, cloud.info().costs)
    update = device.adapt()
    assert report.device == update.device == "d0" and update.num_samples > 0
    assert device.bytes_sent > len(package.payload) and device.bytes_received > len(update.payload)
    assert device.ping()


class _Replying(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


class _Boom:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture()
def hostile():
    servers = []

    def start(body: bytes) -> str:
        handler = type("H", (_Replying,), {"body": body})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_a_pickled_reply_is_refused_and_never_unpickled(hostile, tmp_path):
    url = hostile(pickle.dumps(_Boom(str(tmp_path / "pwned"))))
    with pytest.raises(MalformedFrameError):
        RemoteDevice("d0", url).drift()
    assert not (tmp_path / "pwned").exists()


def test_a_reply_claiming_another_device_is_refused(hostile):
    from eclm.campaign.messages import DriftReport

    url = hostile(encode_frame(DriftReport(device="d1", labelled=0.1, label_free=0.2, combined=0.3)))
    with pytest.raises(MalformedFrameError, match="claims to come from 'd1'"):
        RemoteDevice("d0", url).drift()


def test_a_device_error_arrives_as_one_line_with_its_type(cfg, gateway):
    g = gateway(0)
    with pytest.raises(RemoteDeviceError, match="RuntimeError: device d0 has no sub-model installed"):
        RemoteDevice("d0", g.url).adapt()


def test_a_down_gateway_is_a_failed_call_and_the_campaign_goes_on(cfg, gateway):
    g = gateway(2)
    url = g.url
    g.close()  # the device went away
    with pytest.raises(DeviceUnreachable):
        RemoteDevice("d2", url, timeout_s=5).profile()
    results, _ = _campaign(cfg, {"d2": url}, cycles=1)
    assert "d2" in results[0].failures and set(results[0].merge.accepted) <= {"d0", "d1"}
    assert results[0].merge.decision in ("accept", "partial")


def test_preflight_notes_a_silent_gateway_and_the_cli_refuses_an_unknown_device(cfg, gateway, tmp_path, capsys):
    import yaml

    from eclm.cli import EXIT_USAGE, main
    from eclm.preflight import preflight

    g = gateway(0)
    live = g.url
    down = DeviceGateway(EdgeService(cfg, 2))
    down_url = down.url
    down._server.server_close()  # bound once, never served: nothing answers there
    raw = cfg.model_dump(mode="json")
    raw["devices"][0]["gateway"], raw["devices"][2]["gateway"] = live, down_url
    notes = preflight(PlatformConfig.from_dict(raw)).notes
    assert [n for n in notes if "gateway" in n] == [n for n in notes if n.startswith("devices[2] (d2): its gateway")]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["device-gateway", "--config", str(path), "--device", "nope"]) == EXIT_USAGE
    assert "'nope' is not a device of this campaign" in capsys.readouterr().err
