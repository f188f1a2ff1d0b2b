import os

import pytest

ray = pytest.importorskip("ray")

#: small object store: containers often have a small /dev/shm
OBJECT_STORE = 80 * 1024 * 1024


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (2 CPUs, no dashboard) shared by the module's tests."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=OBJECT_STORE, log_to_driver=False,
             runtime_env={"env_vars": {"POLARS_MAX_THREADS": "1"}})
    yield ray
    ray.shutdown()
