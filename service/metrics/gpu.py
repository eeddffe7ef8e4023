"""GPU readings from NVML (nvidia-ml-py): the only module that imports pynvml.

Where the library, the driver or a GPU is missing, ``GpuReader.available`` is False and
``read`` returns nothing: no GPU series is ever invented.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    utilization_ratio: float | None  # 0..1 over NVML's last sample period
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_watts: float | None
    temperature_celsius: float | None


class GpuReader:
    def __init__(self) -> None:
        self._nvml: ModuleType | None = None
        self._handles: list[tuple[int, str, Any]] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(handle)
                self._handles.append((i, name.decode() if isinstance(name, bytes) else str(name), handle))
            self._nvml = pynvml
        except Exception as exc:  # no library, no driver or no GPU: all mean "none"
            log.info("no GPU metrics: NVML unavailable (%s)", type(exc).__name__)
            self._handles = []

    @property
    def available(self) -> bool:
        return self._nvml is not None and bool(self._handles)

    def read(self) -> list[GpuReading]:
        nvml = self._nvml
        if nvml is None:
            return []
        readings = []
        for index, name, handle in self._handles:
            rates = _try(nvml.nvmlDeviceGetUtilizationRates, handle)
            mem = _try(nvml.nvmlDeviceGetMemoryInfo, handle)
            milliwatts = _try(nvml.nvmlDeviceGetPowerUsage, handle)
            celsius = _try(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
            util = rates.gpu / 100.0 if rates is not None else None
            power = milliwatts / 1000.0 if milliwatts is not None else None
            temp = float(celsius) if celsius is not None else None
            readings.append(
                GpuReading(
                    index=index,
                    name=name,
                    utilization_ratio=util,
                    memory_used_bytes=int(mem.used) if mem is not None else None,
                    memory_total_bytes=int(mem.total) if mem is not None else None,
                    power_watts=power,
                    temperature_celsius=temp,
                )
            )
        return readings

    def close(self) -> None:
        if self._nvml is not None:
            _try(self._nvml.nvmlShutdown)
            self._nvml = None


def _try(read: Any, *args: Any) -> Any:
    """One NVML field; a field a GPU does not support (e.g. power on some boards) is None."""
    try:
        return read(*args)
    except Exception:  # NVMLError_NotSupported and friends
        return None
