"""docker-compose.citus.yml, checked for structure (no Docker engine and no Citus image here: the
profile is not run, and docs/scale.md says so): a Citus coordinator and two Citus workers built
with pgvector, the nodes joined before pgsight migrates, migrate and the workers on the coordinator."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NODES = ("coordinator", "citus-worker-1", "citus-worker-2")


def load() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.citus.yml").read_text())


def test_citus_profile_structure():
    compose = load()
    services = compose["services"]
    assert set(services) == {*NODES, "cluster", "migrate", "worker"}

    # every database node: the Citus + pgvector image built here, Citus preloaded, a health check,
    # its own volume, the admin password from a secret (never trust authentication)
    containerfile = ROOT / services["coordinator"]["build"]["context"] / services["coordinator"]["build"]["dockerfile"]
    text = containerfile.read_text()
    assert re.search(r"^ARG CITUS_IMAGE=citusdata/citus:\S+", text, re.M)
    assert "postgresql-${PG_MAJOR}-pgvector" in text
    volumes = set()
    for name in NODES:
        node = services[name]
        assert node["build"] == services["coordinator"]["build"] and node["image"] == services["coordinator"]["image"]
        assert "shared_preload_libraries=citus" in node["command"]
        assert "pg_isready" in " ".join(node["healthcheck"]["test"])
        assert node["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
        assert "POSTGRES_HOST_AUTH_METHOD" not in node["environment"]
        volumes |= {v.split(":")[0] for v in node["volumes"]}
    assert len(volumes) == 3 and volumes <= set(compose["volumes"])
    assert "ports" in services["coordinator"]
    assert all("ports" not in services[n] for n in NODES[1:])  # only the coordinator faces applications

    # the cluster step: after every node is healthy; joins both workers, sets the coordinator, creates
    # pgvector and dblink once the nodes are known, and stores the inter-node password
    cluster = services["cluster"]
    assert cluster["depends_on"] == {n: {"condition": "service_healthy"} for n in NODES}
    script = cluster["command"][0]
    assert "citus_set_coordinator_host('coordinator'" in script
    for worker in NODES[1:]:
        assert f"citus_add_node('{worker}'" in script
    assert script.index("citus_add_node") < script.index("CREATE EXTENSION IF NOT EXISTS vector")
    assert "pg_dist_authinfo" in script and "ON_ERROR_STOP=1" in script
    assert "$$(cat /run/secrets/postgres_password)" in script  # compose's $$: evaluated by the shell, not compose
    assert cluster["restart"] == "no"

    # pgsight: migrate once the cluster exists, on the coordinator; workers after migrate, on the
    # coordinator, logged in as their own role (not the admin)
    migrate, worker = services["migrate"], services["worker"]
    assert migrate["depends_on"] == {"cluster": {"condition": "service_completed_successfully"}}
    assert migrate["command"][:2] == ["pgsight", "migrate"]
    assert "@coordinator:5432/" in migrate["environment"]["PGSIGHT_DSN"]
    assert worker["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert worker["command"][:2] == ["pgsight", "worker"]
    dsn = worker["environment"]["PGSIGHT_DSN"]
    assert dsn.startswith("postgresql://pgsight_worker_login@coordinator:5432/")
    assert worker["secrets"] == ["worker_password"]  # not the admin's
    for name in ("postgres_password", "worker_password"):
        assert compose["secrets"][name]["file"].endswith(f"/{name}")


def test_citus_profile_uses_the_main_worker_image():
    """One worker image for both profiles: the Citus profile builds pgsight from this repository."""
    main = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    citus = load()
    assert citus["services"]["worker"]["image"] == main["services"]["worker"]["image"]
    assert citus["services"]["migrate"]["build"] == main["services"]["migrate"]["build"] == "."
