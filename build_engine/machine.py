"""What this machine is, as far as an engine cares: TensorRT version, GPU, compute capability.

The build records these facts in the sidecar; edge compares them with the machine it runs on
before loading an engine. tensorrt and pycuda are imported only inside ``detect_facts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INSTALL_HINT = (
    "pip install 'edge[gpu]' --extra-index-url https://pypi.nvidia.com "
    "(TensorRT wheels come from NVIDIA's index; pycuda needs the CUDA toolkit to build)"
)


@dataclass(frozen=True)
class EnvFacts:
    """What an engine must match on this machine; None where it could not be found out."""

    tensorrt_version: str | None
    gpu_name: str | None
    compute_capability: str | None  # "8.7" (Orin), "9.0" (H100)
    pycuda_version: str | None = None
    cuda_driver_version: int | None = None
    # Why a fact is missing, in words a plant engineer can act on.
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def tensorrt_major(self) -> int | None:
        if self.tensorrt_version is None:
            return None
        return int(self.tensorrt_version.split(".")[0])

    @property
    def gpu_ready(self) -> bool:
        """tensorrt and pycuda import and a GPU answers: the TensorRT backend can run."""
        return None not in (self.tensorrt_version, self.pycuda_version, self.gpu_name)


def detect_facts() -> EnvFacts:
    """Ask tensorrt and the CUDA driver (through pycuda) what this machine is."""
    problems: list[str] = []
    try:
        import tensorrt as trt

        trt_version: str | None = trt.__version__
    except ImportError:
        trt_version = None
        problems.append("the tensorrt package is not installed")
    except Exception as exc:  # a broken install (missing libnvinfer) fails in its own ways
        trt_version = None
        problems.append(f"tensorrt is installed but does not load: {exc}")
    gpu_name = capability = pycuda_version = driver = None
    try:
        import pycuda
        import pycuda.driver as cuda

        pycuda_version = pycuda.VERSION_TEXT
        cuda.init()
        driver = cuda.get_driver_version()
        if cuda.Device.count() == 0:
            problems.append("the CUDA driver reports no GPU")
        else:
            device = cuda.Device(0)
            gpu_name = device.name()
            capability = "{}.{}".format(*device.compute_capability())
    except ImportError:
        problems.append("the pycuda package is not installed")
    except Exception as exc:  # pycuda.driver.Error: no driver, no device, driver too old
        problems.append(f"no usable NVIDIA GPU: {exc}")
    return EnvFacts(trt_version, gpu_name, capability, pycuda_version, driver, tuple(problems))
