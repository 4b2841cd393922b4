"""torch's CPU thread count for a service, from a setting or the service's declared CPU resources.

torch starts one intra-op thread per core it sees. A service that declares ``cpu: "2"`` on a
machine shared with other processes then runs more threads than it was given, and they fight over
the cores: on the 2-core reference machine one 40-token chat request took 30 s under load with
torch's default, 2.4 s with one thread (STACK.md). Every service that runs torch (LLM, RAG) calls
``configure_torch_threads`` once at start:

    threads = configure_torch_threads(settings.torch_threads, SERVICE_RESOURCES.get("cpu"))

``setting`` (e.g. LLMOPS_TORCH_THREADS) wins; else the declared CPUs (``"2"``, ``"500m"``, 2.5),
rounded down, at least 1; else torch's default is left alone."""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)


def cpu_count_of(resource: str | int | float | None) -> int | None:
    """Whole CPUs in a BentoML ``cpu`` resource (``"2"``, ``"1500m"``, 2.0), at least 1; None if unset."""
    if resource is None or resource == "":
        return None
    text = str(resource).strip()
    try:
        value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        # programming error: each service declares its cpu resource in code
        raise ValueError(f"cpu: {resource!r} is not a number of CPUs (e.g. '2' or '500m')") from None
    if not math.isfinite(value) or value <= 0:  # programming error: as above
        raise ValueError(f"cpu: {resource!r} must be a positive number of CPUs")
    return max(1, int(value))


def configure_torch_threads(setting: int | None, cpu_resource: str | int | float | None = None) -> int:
    """Set torch's intra-op thread count from ``setting`` or ``cpu_resource``; returns the count
    in force. Call it before the model's first forward pass (inter-op threads are fixed then)."""
    import torch

    if setting is not None and setting < 1:
        # programming error: the services' settings models already refuse torch_threads below 1
        raise ValueError(f"torch_threads: must be >= 1, got {setting}")
    threads = setting or cpu_count_of(cpu_resource)
    if threads:
        torch.set_num_threads(threads)
        log.info("torch uses %d CPU threads (%s)", threads, "setting" if setting else "declared cpu")
    return torch.get_num_threads()
