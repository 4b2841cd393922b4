"""torch's thread count from a setting or a service's declared CPUs (llmops.threads)."""

import pytest
import torch

from llmops.threads import configure_torch_threads, cpu_count_of


@pytest.mark.parametrize(
    ("resource", "cpus"), [("2", 2), (2, 2), ("500m", 1), ("2500m", 2), (3.7, 3), (None, None)]
)
def test_declared_cpus_become_whole_threads(resource, cpus):
    assert cpu_count_of(resource) == cpus


@pytest.mark.parametrize("resource", ["two", "0", "-1", "nan", "inf"])
def test_a_bad_cpu_resource_is_named(resource):
    with pytest.raises(ValueError, match="cpu: "):
        cpu_count_of(resource)


def test_the_setting_wins_over_the_declared_cpus_and_none_leaves_torch_alone():
    before = torch.get_num_threads()
    try:
        assert configure_torch_threads(1, "2") == 1 == torch.get_num_threads()
        assert configure_torch_threads(None, "2") == 2 == torch.get_num_threads()
        torch.set_num_threads(1)
        assert configure_torch_threads(None, None) == 1  # nothing declared: as it was
        with pytest.raises(ValueError, match="torch_threads: must be >= 1"):
            configure_torch_threads(0, "2")
    finally:
        torch.set_num_threads(before)
