"""The numba thread pool: the OpenMP layer when the system has its library, numba's own otherwise."""

import numba
import pytest

from moedge.runtime import threads


class FakeNumba:
    """`numba.set_num_threads` as on a system without libgomp: the OpenMP layer cannot load."""

    def __init__(self):
        self.layers = []

    def __call__(self, n):
        self.layers.append((numba.config.THREADING_LAYER, n))
        if numba.config.THREADING_LAYER == "omp":
            raise ValueError("No threading layer could be loaded.")


@pytest.fixture
def no_openmp(monkeypatch):
    fake = FakeNumba()
    monkeypatch.setattr(numba, "set_num_threads", fake)
    monkeypatch.setattr(numba.config, "THREADING_LAYER", numba.config.THREADING_LAYER)
    monkeypatch.delenv("NUMBA_THREADING_LAYER", raising=False)
    return fake


def test_without_openmp_the_pool_is_numbas_own(no_openmp):
    """A minimal aarch64 install (a Debian root without libgomp1) loaded models through the workqueue layer
    in `make check-arm64`; before, `Model.load` died with numba's ValueError."""
    threads.use_threads(1)
    assert [layer for layer, _ in no_openmp.layers] == ["omp", "workqueue"]
    assert numba.config.THREADING_LAYER == "workqueue"


def test_a_layer_the_user_chose_is_not_replaced(no_openmp, monkeypatch):
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "omp")
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "omp")  # what numba reads from it at import
    with pytest.raises(ValueError, match="No threading layer"):
        threads.use_threads(1)
