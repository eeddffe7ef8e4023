"""The shipped deployment files parse and are wired to each other by name, port and volume."""

from __future__ import annotations

from typing import Any

import yaml

from tests.support import ROOT


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _volume_names(service: dict[str, Any]) -> set[str]:
    return {v.split(":")[0] for v in service.get("volumes", []) if not v.startswith((".", "$", "/"))}


def test_compose_services_are_wired() -> None:
    compose = _compose()
    services = compose["services"]
    for name in ("etcd", "minio", "milvus", "apihelper", "engine-build", "apihelper-gpu", "prometheus", "grafana"):
        assert name in services, name
    # Every named volume a service mounts is declared.
    for name, service in services.items():
        assert _volume_names(service) <= set(compose["volumes"]), name
    # Milvus uses etcd and MinIO by their service names and is health-checked before dependants.
    assert services["milvus"]["environment"]["ETCD_ENDPOINTS"].startswith("etcd:")
    assert services["milvus"]["environment"]["MINIO_ADDRESS"].startswith("minio:")
    assert services["apihelper"]["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert "http://milvus:19530" in " ".join(services["apihelper-gpu"]["command"])
    # The engine-build job writes the volume the GPU service reads, and runs first.
    build_out = services["engine-build"]["command"][services["engine-build"]["command"].index("--out") + 1]
    serve_model = services["apihelper-gpu"]["command"][services["apihelper-gpu"]["command"].index("--model") + 1]
    assert build_out == serve_model and "engines:/engines" in services["engine-build"]["volumes"]
    assert services["apihelper-gpu"]["depends_on"]["engine-build"]["condition"] == "service_completed_successfully"
    for gpu_service in ("engine-build", "apihelper-gpu"):
        devices = services[gpu_service]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert services[gpu_service]["profiles"] == ["gpu"]
        assert services[gpu_service]["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    # Prometheus and Grafana mount the shipped provisioning.
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    assert any(v.startswith("./deploy/grafana/provisioning:") for v in services["grafana"]["volumes"])
    assert any(v.startswith("./deploy/grafana/dashboards:") for v in services["grafana"]["volumes"])
    for dockerfile in {s["build"]["dockerfile"] for s in services.values() if "build" in s}:
        assert (ROOT / dockerfile).is_file()


def test_prometheus_scrapes_the_services_metrics_ports() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {"apihelper:9464", "apihelper-gpu:9464"} <= targets


def test_grafana_datasource_matches_the_dashboard() -> None:
    import json

    datasource = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "apihelper.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}
    provider = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "apihelper.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
