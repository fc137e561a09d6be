"""Shared test settings: tiny CPU work, no network, an isolated MLflow store per test session."""

import os

# Tests must never reach the network, and must not write into the user's working directory.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import pytest

from tiny import FAST

# Fixtures that live in their own modules.
pytest_plugins = ["slurm_fixture"]


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path, monkeypatch):
    """Every test gets its own sqlite MLflow store unless it sets one itself."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(None)  # an earlier test's in-process code may have pinned its own store
    yield
    mlflow.set_tracking_uri(None)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One tiny SynthSing set for the module, generated here so parallel jobs do not wait on it."""
    from singer.config import compose
    from singer.data.batches import build_datasets

    root = tmp_path_factory.mktemp("synthsing")
    build_datasets(compose([*FAST, f"data.root={root}"]))
    return root
